"""Exported graphs (ONNX, TorchScript) against the eager SubTransformer they came from."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _archs import ARCHS, FORMATS, MIXED, SPACE, TOL

from profiler.errors import ArtifactError
from profiler.export import export_arch, export_model
from profiler.model import SubTransformer
from profiler.space import ArchConfig
from profiler.workload import EXPORT_VERSION, MANIFEST_NAME, cache_names, decoder_input_names


class Graphs:
    """An artifact's three graphs, called with named numpy inputs, returning numpy outputs."""

    def __init__(self, fmt: str, directory, manifest: dict):
        self.fmt = fmt
        files = {g: directory / name for g, name in manifest["graphs"].items()}
        if fmt == "onnx":
            self._graphs = {g: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                            for g, p in files.items()}
        else:
            self._graphs = {g: torch.jit.load(str(p)) for g, p in files.items()}

    def __call__(self, graph: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.fmt == "onnx":
            return self._graphs[graph].run(None, inputs)
        with torch.inference_mode():
            out = self._graphs[graph](*(torch.from_numpy(v) for v in inputs.values()))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """For each arch: the eager model and, per format, (artifact dir, manifest, graphs)."""
    result = {}
    for name, arch in ARCHS.items():
        model = SubTransformer(arch, SPACE, seed=0).eval()
        per_format = {}
        for fmt in FORMATS:
            directory = export_model(model, fmt, tmp_path_factory.mktemp(f"{name}-{fmt}"), seed=0)
            manifest = json.loads((directory / MANIFEST_NAME).read_text())
            per_format[fmt] = (directory, manifest, Graphs(fmt, directory, manifest))
        result[name] = (model, per_format)
    return result


def _flat(kvs) -> list[np.ndarray]:
    return [t.numpy() for kv in kvs for t in kv]


def _source(length: int) -> torch.Tensor:
    return torch.randint(4, SPACE.src_vocab, (1, length), generator=torch.Generator().manual_seed(length))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("src_len", [30, 11])
def test_encoder_and_cross_kv_match_eager(exported, name, fmt, src_len):
    model, per_format = exported[name]
    graphs = per_format[fmt][2]
    src = _source(src_len)
    with torch.inference_mode():
        states = model.encode(src)
        cross = model.cross_kv(states)
    (got_states,) = graphs("encoder", {"src_tokens": src.numpy()})
    assert got_states.shape == (model.encoder_states_kept, 1, src_len, model.arch.encoder_embed_dim)
    np.testing.assert_allclose(got_states, states.numpy(), rtol=0, atol=TOL)
    got_cross = graphs("cross_kv", {"encoder_states": states.numpy()})
    assert len(got_cross) == 2 * model.arch.decoder_layer_num
    for got, want in zip(got_cross, _flat(cross)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("beam,past", [(1, 0), (5, 0), (3, 9)])
def test_decoder_step_matches_eager_for_other_shapes(exported, name, fmt, beam, past):
    model, per_format = exported[name]
    graphs = per_format[fmt][2]
    gen = torch.Generator().manual_seed(beam * 100 + past)
    with torch.inference_mode():
        cross = model.cross_kv(model.encode(_source(13)))
        cache = [(torch.randn(beam, layer.self_attn.heads, past, layer.self_attn.head_dim, generator=gen),
                  torch.randn(beam, layer.self_attn.heads, past, layer.self_attn.head_dim, generator=gen))
                 for layer in model.decoder_layers]
        tokens = torch.randint(4, SPACE.tgt_vocab, (beam, 1), generator=gen)
        step = torch.tensor(past)
        log_probs, new_cache = model.decode_step(tokens, step, cache, cross)
    names = decoder_input_names(model.arch.decoder_layer_num)
    values = [tokens.numpy(), step.numpy(), *_flat(cache), *_flat(cross)]
    got = graphs("decoder_step", dict(zip(names, values)))
    want = [log_probs.numpy(), *_flat(new_cache)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=TOL)


@pytest.mark.parametrize("name", ARCHS)
def test_onnx_files_pass_the_checker_and_name_their_io(exported, name):
    model, per_format = exported[name]
    directory, manifest, _ = per_format["onnx"]
    layers = model.arch.decoder_layer_num
    expected_inputs = {"encoder": ["src_tokens"], "cross_kv": ["encoder_states"],
                       "decoder_step": decoder_input_names(layers)}
    for graph, file in manifest["graphs"].items():
        onnx.checker.check_model(str(directory / file), full_check=True)
        proto = onnx.load(str(directory / file))
        assert [i.name for i in proto.graph.input] == expected_inputs[graph]
        assert proto.opset_import[0].version == 17
    outputs = [o.name for o in onnx.load(str(directory / manifest["graphs"]["cross_kv"])).graph.output]
    assert outputs == cache_names(layers, "cross")


@pytest.mark.parametrize("fmt", FORMATS)
def test_manifest_describes_the_artifact(exported, fmt):
    model, per_format = exported["mixed"]
    directory, manifest, _ = per_format[fmt]
    assert manifest["format"] == fmt
    assert ArchConfig.from_dict(manifest["arch"]) == MIXED
    assert manifest["space"] == SPACE.to_dict()
    assert manifest["decoder_layers"] == [{"heads": h, "head_dim": SPACE.qkv_dim // h}
                                          for h in MIXED.decoder_self_attention_heads]
    assert manifest["encoder_states_kept"] == 3
    assert (manifest["src_vocab"], manifest["tgt_vocab"]) == (SPACE.src_vocab, SPACE.tgt_vocab)
    assert manifest["seed"] == 0
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["onnx"] == onnx.__version__
    assert manifest["versions"]["opset"] == 17
    assert manifest["versions"]["export_version"] == EXPORT_VERSION
    files = sorted([MANIFEST_NAME, *manifest["graphs"].values()])
    assert sorted(p.name for p in directory.iterdir()) == files


def test_export_keeps_the_models_training_flag(tmp_path):
    model = SubTransformer(SPACE.smallest(), SPACE).train()
    export_model(model, "torchscript", tmp_path / "a")
    assert model.training


def test_export_refuses_bad_format_and_nonempty_dir(tmp_path):
    with pytest.raises(ArtifactError, match="unknown export format"):
        export_arch(SPACE.smallest(), SPACE, "tflite", tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "stale").write_text("x")
    with pytest.raises(ArtifactError, match="not empty"):
        export_arch(SPACE.smallest(), SPACE, "onnx", tmp_path / "b")
