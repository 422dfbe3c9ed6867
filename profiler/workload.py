"""The timed workload and the artifact layout shared by the exporter and every runner.

Torch-free on purpose (numpy only): the device side imports it next to onnxruntime.
An artifact directory holds three graphs and a `manifest.json`:

- `encoder`: `src_tokens` int64 (1, S) -> `encoder_states` (K, 1, S, D)
- `cross_kv`: `encoder_states` -> `cross_k_{i}`, `cross_v_{i}` (1, H, S', d) per decoder layer
- `decoder_step`: `tokens` int64 (N, 1), `step` int64 (), `cache_k_{i}`, `cache_v_{i}`
  (N, H_i, T, d_i), `cross_k_{i}`, `cross_v_{i}` -> `log_probs` (N, V), `new_cache_k_{i}`,
  `new_cache_v_{i}` (N, H_i, T + 1, d_i)
"""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from profiler.errors import ArtifactError, RunnerError

#: Bumped whenever the graphs' interface or the manifest changes; part of the cache key.
EXPORT_VERSION = 1
#: eager: the model's weights only; the runner rebuilds the `SubTransformer` (the reference).
FORMATS = ("onnx", "torchscript", "eager")
OPSET = 17
MANIFEST_NAME = "manifest.json"
GRAPHS = ("encoder", "cross_kv", "decoder_step")
GRAPH_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
EAGER_WEIGHTS = "weights.pt"
#: Token ids 0-3 are PAD, BOS, EOS, UNK; the dummy sentence avoids them.
FIRST_WORD_ID = 4
BOS = 1


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    """The toolchain an artifact depends on; part of its manifest and of its cache key.

    Read from package metadata, so computing a cache key does not import torch.
    """
    return {"torch": _distribution_version("torch"), "onnx": _distribution_version("onnx"),
            "opset": OPSET, "export_version": EXPORT_VERSION}


def cache_names(layers: int, prefix: str = "cache") -> list[str]:
    """`{prefix}_k_0, {prefix}_v_0, {prefix}_k_1, ...`: the per-layer key/value tensor names."""
    return [f"{prefix}_{kv}_{i}" for i in range(layers) for kv in "kv"]


def decoder_input_names(layers: int) -> list[str]:
    return ["tokens", "step", *cache_names(layers), *cache_names(layers, "cross")]


def decoder_output_names(layers: int) -> list[str]:
    return ["log_probs", *cache_names(layers, "new_cache")]


def dummy_source(seq_len: int, src_vocab: int) -> np.ndarray:
    """HAT's timed input: one deterministic sentence of `seq_len` word ids, int64 (1, seq_len)."""
    rng = np.random.RandomState(0)
    return rng.randint(FIRST_WORD_ID, src_vocab, size=(1, seq_len)).astype(np.int64)


def read_manifest(artifact_dir: str | Path, fmt: str) -> dict[str, Any]:
    """The manifest of an artifact of format `fmt`, checked against this code's layout."""
    path = Path(artifact_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact manifest {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ArtifactError(f"artifact manifest {path} is not valid JSON: {exc}") from None
    if manifest.get("format") != fmt:
        raise ArtifactError(f"artifact {path.parent} has format {manifest.get('format')!r}, not {fmt!r}")
    version = manifest.get("versions", {}).get("export_version")
    if version != EXPORT_VERSION:
        raise ArtifactError(f"artifact {path.parent} has export version {version}, this hatprof "
                            f"reads version {EXPORT_VERSION}: export it again")
    return manifest


def check_workload(seq_len: int, beam: int, threads: int, max_positions: int, vocab: int) -> None:
    """Reject a workload the model cannot run, with a message naming the bad setting."""
    for name, value in (("seq_len", seq_len), ("beam", beam), ("threads", threads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RunnerError(f"{name} must be a positive integer, got {value!r}")
    if seq_len > max_positions:
        raise RunnerError(f"seq_len {seq_len} exceeds the model's {max_positions} positions")
    if beam > vocab:
        raise RunnerError(f"beam {beam} exceeds the target vocabulary of {vocab}")


def backtrack(origins: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Beam sequences (beam, steps) from per-step `origins` and `tokens`, both (steps, beam)."""
    steps, beam = tokens.shape
    out = np.empty((beam, steps), dtype=np.int64)
    rows = np.arange(beam)
    for t in range(steps - 1, -1, -1):
        out[:, t] = tokens[t, rows]
        rows = origins[t, rows]
    return out


class Runner(Protocol):
    """What the timing protocol needs from a runtime: the two timed halves of HAT's workload."""

    runtime: str
    seq_len: int
    beam: int
    threads: int

    def run_encoder(self) -> None: ...

    def run_decoder(self) -> None: ...

    def close(self) -> None: ...


def open_runner(fmt: str, artifact_dir: str | Path | None = None, model: Any = None, seq_len: int = 30,
                beam: int = 5, threads: int = 1) -> Runner:
    """The runner for `fmt` over `artifact_dir`; "eager" also takes a `SubTransformer` as `model`.

    onnx needs only onnxruntime; torchscript and eager import torch, here and only here.
    """
    if fmt not in FORMATS:
        raise ArtifactError(f"unknown runner format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt == "eager" and model is not None:
        from profiler.torch_runners import EagerRunner

        return EagerRunner(model, seq_len, beam, threads)
    if artifact_dir is None:
        raise ArtifactError(f"the {fmt} runner needs an artifact directory")
    if fmt == "onnx":
        from profiler.ort_runner import OnnxRunner

        return OnnxRunner(artifact_dir, seq_len, beam, threads)
    from profiler import torch_runners

    if fmt == "eager":
        return torch_runners.EagerRunner(torch_runners.load_eager_model(artifact_dir), seq_len, beam, threads)
    return torch_runners.TorchScriptRunner(artifact_dir, seq_len, beam, threads)
