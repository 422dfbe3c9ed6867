"""Export a SubTransformer to an artifact directory (ONNX or TorchScript).

Three graphs are written, with the names and shapes listed in `profiler.workload`:
the encoder, the encoder-decoder keys/values (computed once per sentence), and one
decoder step with an explicit self-attention cache, so a timed decode is incremental
like HAT's and like deployed decoders. The batch (beam) and cache length are dynamic;
a cache of length 0 is the first step. `manifest.json` is written last.
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from profiler.errors import ArtifactError
from profiler.model import SubTransformer
from profiler.space import ArchConfig, DesignSpace
from profiler.workload import (
    EAGER_WEIGHTS, FORMATS, GRAPH_SUFFIX, GRAPHS, MANIFEST_NAME, OPSET, cache_names,
    decoder_input_names, decoder_output_names, versions,
)

logger = logging.getLogger(__name__)

# Example shapes for tracing, chosen unlike the timed ones (1 or beam rows, cache 0..29)
# so that a shape wrongly frozen into a graph shows up in the tests.
_EXAMPLE_SRC_LEN, _EXAMPLE_BEAM, _EXAMPLE_PAST = 7, 2, 3


class _Encoder(nn.Module):
    def __init__(self, model: SubTransformer):
        super().__init__()
        self.model = model

    def forward(self, src_tokens: Tensor) -> Tensor:
        return self.model.encode(src_tokens)


class _CrossKV(nn.Module):
    def __init__(self, model: SubTransformer):
        super().__init__()
        self.model = model

    def forward(self, encoder_states: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for kv in self.model.cross_kv(encoder_states) for t in kv)


class _DecoderStep(nn.Module):
    """`decode_step` over flat tensors: tokens, step, self caches, then cross keys/values."""

    def __init__(self, model: SubTransformer):
        super().__init__()
        self.model = model
        self.layers = len(model.decoder_layers)

    def forward(self, tokens: Tensor, step: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        n = self.layers
        cache = [(flat[2 * i], flat[2 * i + 1]) for i in range(n)]
        cross = [(flat[2 * n + 2 * i], flat[2 * n + 2 * i + 1]) for i in range(n)]
        log_probs, new_cache = self.model.decode_step(tokens, step, cache, cross)
        return (log_probs, *(t for kv in new_cache for t in kv))


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the state dict's names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _examples(model: SubTransformer) -> dict[str, tuple[Tensor, ...]]:
    """Example inputs for each graph, computed by the model itself."""
    src = torch.randint(4, model.space.src_vocab, (1, _EXAMPLE_SRC_LEN),
                        generator=torch.Generator().manual_seed(0))
    states = model.encode(src)
    cross = model.cross_kv(states)
    past = model.decode(torch.full((_EXAMPLE_BEAM, _EXAMPLE_PAST), 4, dtype=torch.long),
                        torch.zeros((), dtype=torch.long), model.empty_cache(_EXAMPLE_BEAM), cross)[1]
    step = (torch.full((_EXAMPLE_BEAM, 1), 5, dtype=torch.long), torch.tensor(_EXAMPLE_PAST),
            *(t for kv in past for t in kv), *(t for kv in cross for t in kv))
    return {"encoder": (src,), "cross_kv": (states,), "decoder_step": step}


def _io_names(model: SubTransformer) -> dict[str, tuple[list[str], list[str], dict[str, dict[int, str]]]]:
    """Per graph: input names, output names and dynamic axes."""
    layers = len(model.decoder_layers)
    cross = cache_names(layers, "cross")
    dynamic: dict[str, dict[int, str]] = {"tokens": {0: "beam"}, "log_probs": {0: "beam"}}
    for name in cache_names(layers):
        dynamic[name] = {0: "beam", 2: "past_len"}
    for name in cache_names(layers, "new_cache"):
        dynamic[name] = {0: "beam", 2: "total_len"}
    for i, name in enumerate(cross):
        dynamic[name] = {2: f"cross_len_{i // 2}"}
    src = {"src_tokens": {1: "src_len"}, "encoder_states": {2: "src_len"}}
    return {
        "encoder": (["src_tokens"], ["encoder_states"], src),
        "cross_kv": (["encoder_states"], cross, {"encoder_states": src["encoder_states"],
                                                 **{n: dynamic[n] for n in cross}}),
        "decoder_step": (decoder_input_names(layers), decoder_output_names(layers), dynamic),
    }


def _export_onnx(wrapper: nn.Module, example: tuple[Tensor, ...], path: Path,
                 names: tuple[list[str], list[str], dict[str, dict[int, str]]]) -> None:
    import onnx

    inputs, outputs, dynamic = names
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated but about 20x faster than dynamo here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, example, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True,
                          dynamo=False)
    onnx.checker.check_model(str(path), full_check=True)


def _export_torchscript(wrapper: nn.Module, example: tuple[Tensor, ...], path: Path) -> None:
    traced = torch.jit.trace(wrapper, example, check_trace=False)
    torch.jit.save(traced, str(path))


def _export_graphs(model: SubTransformer, fmt: str, out: Path) -> dict[str, str]:
    """The three graphs of `model` in `out`; returns graph name -> file name."""
    with torch.no_grad():
        examples = _examples(model)
        io_names = _io_names(model)
        wrappers = {"encoder": _Encoder(model), "cross_kv": _CrossKV(model),
                    "decoder_step": _DecoderStep(model)}
        files = {}
        for graph in GRAPHS:
            files[graph] = graph + GRAPH_SUFFIX[fmt]
            if fmt == "onnx":
                _export_onnx(wrappers[graph], examples[graph], out / files[graph], io_names[graph])
            else:
                _export_torchscript(wrappers[graph], examples[graph], out / files[graph])
    return files


def export_model(model: SubTransformer, fmt: str, out_dir: str | Path, seed: int | None = None) -> Path:
    """Write `model` as a `fmt` artifact into `out_dir` (created; must be empty) and return it.

    `seed` is recorded in the manifest when the weights come from `SubTransformer(seed=...)`.
    The model is exported in eval mode without gradients; its training flag is restored.
    """
    if fmt not in FORMATS:
        raise ArtifactError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ArtifactError(f"export directory {out} is not empty")
    arch = model.arch
    was_training = model.training
    model.eval()
    try:
        if fmt == "eager":
            files = {"weights": EAGER_WEIGHTS}
            torch.save(model.state_dict(), out / EAGER_WEIGHTS)
        else:
            files = _export_graphs(model, fmt, out)
    except Exception as exc:  # the exporters raise many types; the caller needs one
        raise ArtifactError(f"{fmt} export of architecture {arch.arch_id} failed: {exc}") from exc
    finally:
        model.train(was_training)
    manifest = {
        "format": fmt,
        "arch_id": arch.arch_id,
        "arch": arch.to_dict(),
        "space": model.space.to_dict(),
        "graphs": files,
        "decoder_layers": [{"heads": layer.self_attn.heads, "head_dim": layer.self_attn.head_dim}
                           for layer in model.decoder_layers],
        "encoder_states_kept": model.encoder_states_kept,
        "src_vocab": model.space.src_vocab,
        "tgt_vocab": model.space.tgt_vocab,
        "max_positions": model.space.max_positions,
        "seed": seed,
        "weights_sha256": weights_digest(model),
        "versions": versions(),
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    logger.debug("exported %s as %s to %s", arch.arch_id, fmt, out)
    return out


def export_arch(arch: ArchConfig, space: DesignSpace, fmt: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build `SubTransformer(arch, space, seed)` and export it (see `export_model`)."""
    return export_model(SubTransformer(arch, space, seed=seed), fmt, out_dir, seed=seed)
