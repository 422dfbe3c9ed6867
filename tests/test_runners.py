"""Runners (onnxruntime, TorchScript, eager) against eager PyTorch and a cache-free beam search."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from _archs import ARCHS, FORMATS, MIXED, SPACE, TOL

from profiler.artifacts import get_artifact
from profiler.errors import ArtifactError, RunnerError
from profiler.model import BOS, SubTransformer
from profiler.ort_runner import OnnxRunner
from profiler.torch_runners import EagerRunner, TorchScriptRunner
from profiler.workload import open_runner
from profiler.workload import backtrack, dummy_source


@pytest.fixture(scope="module")
def setups(tmp_path_factory):
    """For each arch: the eager model (seed 0) and its cached artifacts per format."""
    cache = tmp_path_factory.mktemp("cache")
    return {name: (SubTransformer(arch, SPACE, seed=0),
                   {fmt: get_artifact(arch, SPACE, fmt, cache_dir=cache, seed=0) for fmt in FORMATS})
            for name, arch in ARCHS.items()}


def _runner(setups, name: str, fmt: str, **kwargs):
    model, dirs = setups[name]
    return open_runner(fmt, artifact_dir=dirs.get(fmt), model=model, **kwargs)


def reference_beam_search(model: SubTransformer, src: np.ndarray, steps: int, beam: int):
    """Beam search without any cache: every hypothesis is re-decoded from BOS (teacher forcing)."""
    src_tokens = torch.from_numpy(src)
    hyps, scores = [[BOS]], [0.0]
    with torch.inference_mode():
        for _ in range(steps):
            prev = torch.tensor(hyps)
            logits = model(src_tokens.expand(len(hyps), -1), prev)
            log_probs = torch.log_softmax(logits[:, -1], dim=-1).double()
            total = torch.tensor(scores, dtype=torch.float64)[:, None] + log_probs
            best = torch.topk(total.flatten(), beam).indices.tolist()
            vocab = log_probs.shape[1]
            hyps = [hyps[i // vocab] + [i % vocab] for i in best]
            scores = [float(total.flatten()[i]) for i in best]
    return np.array([h[1:] for h in hyps]), np.array(scores)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ARCHS)
def test_greedy_decode_of_30_steps_matches_eager(setups, name, fmt):
    eager = _runner(setups, name, "eager", seq_len=30)
    runner = _runner(setups, name, fmt, seq_len=30)
    want_tokens, want_log_probs = eager.greedy_decode(30)
    tokens, log_probs = runner.greedy_decode(30)
    assert log_probs.shape == (30, SPACE.tgt_vocab)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_allclose(log_probs, want_log_probs, rtol=0, atol=TOL)
    runner.close()


@pytest.mark.parametrize("name", ["largest", "mixed"])
def test_eager_beam_search_matches_a_cache_free_reference(setups, name):
    model = setups[name][0]
    runner = EagerRunner(model, seq_len=6, beam=4)
    tokens, scores = runner.beam_search()
    want_tokens, want_scores = reference_beam_search(model, dummy_source(6, SPACE.src_vocab), 6, 4)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=TOL)


@pytest.mark.parametrize("name", ARCHS)
def test_exported_runners_beam_search_like_eager(setups, name):
    want_tokens, want_scores = _runner(setups, name, "eager", seq_len=8, beam=5).beam_search()
    assert want_tokens.shape == (5, 8)
    for fmt in FORMATS:
        runner = _runner(setups, name, fmt, seq_len=8, beam=5)
        for _ in range(2):  # every run starts afresh from BOS
            tokens, scores = runner.beam_search()
            np.testing.assert_array_equal(tokens, want_tokens)
            np.testing.assert_allclose(scores, want_scores, rtol=0, atol=TOL)
        assert np.all(np.diff(scores) <= 0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "eager"])
def test_runners_share_the_interface_and_the_sentence(setups, fmt):
    runner = _runner(setups, "smallest", fmt, seq_len=5, beam=3, threads=1)
    assert runner.runtime == {"onnx": "onnxruntime", "torchscript": "torchscript", "eager": "pytorch"}[fmt]
    assert runner.run_encoder() is None
    assert runner.run_decoder() is None
    assert (runner.seq_len, runner.beam, runner.threads) == (5, 3, 1)
    runner.close()


def test_dummy_source_is_deterministic_and_avoids_special_tokens():
    src = dummy_source(30, 40)
    assert src.shape == (1, 30) and src.dtype == np.int64
    assert src.min() >= 4 and src.max() < 40
    np.testing.assert_array_equal(src, dummy_source(30, 40))
    assert len(np.unique(src)) > 10


def test_backtrack_follows_origins():
    tokens = np.array([[5, 6], [7, 8], [9, 10]])
    origins = np.array([[0, 0], [1, 0], [1, 0]])
    # final beam 0 came from beam 1 at step 1 (token 8), which came from beam 0 (token 5)
    np.testing.assert_array_equal(backtrack(origins, tokens), [[5, 8, 9], [6, 7, 10]])


def test_bad_workloads_and_artifacts_are_refused(setups):
    model, dirs = setups["smallest"]
    with pytest.raises(RunnerError, match="seq_len"):
        OnnxRunner(dirs["onnx"], seq_len=SPACE.max_positions + 1)
    with pytest.raises(RunnerError, match="beam"):
        EagerRunner(model, beam=0)
    with pytest.raises(ArtifactError, match="format 'onnx', not 'torchscript'"):
        TorchScriptRunner(dirs["onnx"])
    with pytest.raises(RunnerError, match="vocabulary"):
        EagerRunner(model, beam=SPACE.tgt_vocab + 1)
    with pytest.raises(ArtifactError, match="format 'torchscript', not 'onnx'"):
        OnnxRunner(dirs["torchscript"])
    with pytest.raises(ArtifactError, match="unknown runner format"):
        open_runner("tvm", artifact_dir=dirs["onnx"])
    with pytest.raises(ArtifactError, match="artifact directory"):
        open_runner("onnx", model=model)


def test_unreadable_onnx_graph_is_an_artifact_error(setups, tmp_path):
    directory = tmp_path / "artifact"
    shutil.copytree(setups["smallest"][1]["onnx"], directory)
    (directory / "decoder_step.onnx").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="decoder_step.onnx"):
        OnnxRunner(directory)


def test_ort_runner_imports_no_torch_pandas_or_sklearn():
    code = ("import sys, profiler.ort_runner; "
            "print(sorted({'torch', 'pandas', 'sklearn'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_eager_artifact_rebuilds_the_same_model(tmp_path):
    from profiler.artifacts import get_artifact
    from profiler.model import SubTransformer
    from profiler.space import load_space
    from profiler.torch_runners import EagerRunner
    from profiler.workload import open_runner

    space = load_space("compact")
    arch = space.sample_many(1, seed=4)[0]
    model = SubTransformer(arch, space, seed=9)
    artifact = get_artifact(arch, space, "eager", cache_dir=tmp_path, model=model)
    from_artifact = open_runner("eager", artifact_dir=artifact, seq_len=6, beam=2)
    direct = EagerRunner(model, seq_len=6, beam=2)
    tokens_a, log_probs_a = from_artifact.greedy_decode(6)
    tokens_b, log_probs_b = direct.greedy_decode(6)
    assert (tokens_a == tokens_b).all()
    assert abs(log_probs_a - log_probs_b).max() == 0.0
