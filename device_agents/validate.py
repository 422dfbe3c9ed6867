"""Validation of uploaded artifact files before the agent ever runs them.

Runs in the agent's worker process (time-limited, killable). An ONNX file must parse,
pass `onnx.checker` when onnx is installed, refer to no external data (an ONNX
tensor can name a file that onnxruntime would read relative to the model), and load
in onnxruntime from bytes (so no file beside it can be read). A manifest must be a
small JSON object whose graph file names are exactly the allowed ones, because the
runner opens the files the manifest names.
"""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Iterator

from profiler.workload import GRAPH_SUFFIX, GRAPHS

logger = logging.getLogger(__name__)

#: Largest manifest accepted (the real ones are a few kB).
MAX_MANIFEST_BYTES = 1 << 20
#: Bounds on the manifest numbers the runner allocates buffers from.
_MAX_VOCAB = 1 << 22
_MAX_POSITIONS = 1 << 16
_MAX_LAYERS = 256


class ValidationError(Exception):
    """An uploaded file that must not be stored or run."""


def validate(path: Path, kind: str) -> None:
    """Raise `ValidationError` unless the file at `path` is a safe, loadable `kind`."""
    if kind == "json":
        check_manifest(path)
    elif kind == "onnx":
        check_onnx(path)
    elif kind == "torchscript":
        check_torchscript(path)
    else:
        raise ValidationError(f"unknown artifact file kind {kind!r}")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def loads_strict(text: str | bytes) -> Any:
    """JSON without NaN/Infinity or duplicate keys; deep nesting is a ValueError, not a crash."""
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_object)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _bounded_int(manifest: dict[str, Any], name: str, highest: int) -> None:
    value = manifest.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= highest:
        raise ValidationError(f"manifest {name} must be an integer in [1, {highest}]")


def check_manifest(path: Path) -> None:
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ValidationError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = loads_strict(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ValidationError("manifest must be a JSON object")
    fmt = manifest.get("format")
    if fmt not in GRAPH_SUFFIX:
        raise ValidationError(f"manifest format must be one of {', '.join(GRAPH_SUFFIX)}")
    expected = {graph: graph + GRAPH_SUFFIX[fmt] for graph in GRAPHS}
    if manifest.get("graphs") != expected:
        raise ValidationError(f"manifest graphs must be exactly {expected}")
    for name, highest in (("src_vocab", _MAX_VOCAB), ("tgt_vocab", _MAX_VOCAB),
                          ("max_positions", _MAX_POSITIONS)):
        _bounded_int(manifest, name, highest)
    layers = manifest.get("decoder_layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= _MAX_LAYERS:
        raise ValidationError(f"manifest decoder_layers must be a list of 1 to {_MAX_LAYERS} layers")
    for layer in layers:
        if not isinstance(layer, dict):
            raise ValidationError("manifest decoder_layers entries must be objects")
        for name in ("heads", "head_dim"):
            _bounded_int(layer, name, 1 << 16)


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto in an ONNX graph, its node attributes and subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        for sparse in attr.sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if attr.HasField("g"):
            yield from _tensors(attr.g)
        for sub in attr.graphs:
            yield from _tensors(sub)


def _check_with_onnx(data: bytes) -> None:
    import onnx
    from onnx import TensorProto

    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and others: all mean "not ONNX"
        raise ValidationError(f"not an ONNX model: {exc}") from None
    if not model.HasField("graph"):
        raise ValidationError("not an ONNX model: it has no graph")
    tensors = list(_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            tensors.extend(_node_tensors(node))
    if any(t.HasField("data_location") and t.data_location == TensorProto.EXTERNAL for t in tensors):
        raise ValidationError("ONNX models with external data are refused: embed the weights")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ValidationError(f"ONNX checker: {str(exc).splitlines()[0]}") from None


def _onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def check_onnx(path: Path, use_onnx: bool | None = None) -> None:
    """Parse and check with onnx (when installed), then load in onnxruntime from bytes."""
    import onnxruntime as ort

    data = path.read_bytes()
    if use_onnx if use_onnx is not None else _onnx_available():
        _check_with_onnx(data)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # validation failures are reported to the client, not logged
    try:
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's pybind errors share no useful base class
        raise ValidationError(f"onnxruntime cannot load it: {str(exc).splitlines()[0][:300]}") from None


#: Bounds on a TorchScript archive (a zip file) before torch ever sees it.
_MAX_ZIP_MEMBERS = 10_000


def check_torchscript(path: Path) -> None:
    """A zip archive with safe member names; loading it is torch's job, on an opted-in agent."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValidationError(f"not a TorchScript archive: {exc}") from None
    if not members or len(members) > _MAX_ZIP_MEMBERS:
        raise ValidationError("TorchScript archive has no members or too many")
    for info in members:
        parts = info.filename.replace("\\", "/").split("/")
        if info.filename.startswith("/") or ".." in parts:
            raise ValidationError(f"TorchScript archive member with an unsafe name: {info.filename!r}")
