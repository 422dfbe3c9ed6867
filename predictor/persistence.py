"""Saving and loading predictors without pickle.

A predictor file is a zip archive of two members:

- `predictor.json`: the format name and version, the kind of predictor, its model,
  feature set and feature-definition version, the estimators' classes and
  hyper-parameters, the metadata (device, space, data settings, training-data hash,
  metrics, library versions), and a self-check: a few input rows with the predictions
  made for them when the file was written;
- `arrays.npz`: every fitted parameter as a named numpy array, read with
  `allow_pickle=False`.

Since format version 2 the manifest also carries the prediction intervals' conformal
scores (`predictor.conformal`), and an adapted predictor's manifest its k left-out
corrections and its rows' leverage (jackknife+; adapted files without them keep plain
jackknife intervals); version 1 files still load, without intervals.

Tree ensembles are stored as their exported node arrays (see `predictor.trees`), not as
a refit recipe: the file then predicts without scikit-learn and cannot drift when
scikit-learn changes its fitting. Because nothing but numpy arithmetic runs at
prediction time, library versions are recorded rather than required to match; what
must match is the file format, the feature definitions and the self-check, and any
mismatch there is a `PredictorError` that says so, never a silent wrong answer.
"""
from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd

from profiler.errors import HatprofError, PredictorError
from profiler.files import write_atomically
from profiler.space import ArchConfig

from predictor.conformal import Conformal
from predictor.core import LatencyPredictor, library_versions
from predictor.transfer import TransferPredictor

log = logging.getLogger(__name__)

FORMAT = "hatprof-predictor"
FORMAT_VERSION = 2
MANIFEST, ARRAYS = "predictor.json", "arrays.npz"
#: Relative tolerance of the self-check (identical on one machine; BLAS may differ elsewhere).
CHECK_RTOL = 1e-6


class Predictor(Protocol):
    """What the search and the CLI use: any loaded predictor has these."""

    metadata: dict[str, Any]
    intervals: Conformal | None

    def predict_archs(self, archs: Sequence[ArchConfig]) -> np.ndarray: ...

    def predict_frame(self, df: pd.DataFrame) -> pd.DataFrame: ...

    def interval_inputs(self, df: pd.DataFrame | None = None,
                        archs: Sequence[ArchConfig] | None = None) -> dict[str, np.ndarray]: ...

    def predict_with_inputs(self, df: pd.DataFrame | None = None, archs: Sequence[ArchConfig] | None = None
                            ) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...


KINDS = {"latency": LatencyPredictor, "transfer": TransferPredictor}


def _payload(pred: Predictor) -> tuple[dict, dict[str, np.ndarray]]:
    if not isinstance(pred, tuple(KINDS.values())):
        raise PredictorError(f"cannot save a {type(pred).__name__}")
    manifest, arrays = pred.to_payload()
    intervals = pred.intervals
    return {**manifest, "intervals": None if intervals is None else intervals.to_dict()}, arrays


def _from_payload(manifest: dict, arrays: dict[str, np.ndarray]) -> Predictor:
    kind = manifest.get("kind")
    if kind not in KINDS:
        raise PredictorError(f"unknown predictor kind {kind!r} (known: {', '.join(KINDS)})")
    pred = KINDS[kind].from_payload(manifest, arrays)
    intervals = manifest.get("intervals")
    pred.intervals = None if intervals is None else Conformal.from_dict(intervals)
    return pred


def save_predictor(pred: Predictor, path: str | Path) -> Path:
    """Write `pred` to `path` (a zip of JSON and npz), with its self-check."""
    manifest, arrays = _payload(pred)
    check = _check_frame(pred)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **manifest,
        "saved_with": library_versions(),
        "self_check": None if check is None else pred.predict_frame(check)["predicted_ms"].tolist(),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = Path(path)

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1, allow_nan=False))
            archive.writestr(ARRAYS, buffer.getvalue())

    write_atomically(path, write, PredictorError)
    log.info("saved %s predictor to %s", manifest["kind"], path)
    return path


def load_predictor(path: str | Path) -> Predictor:
    """Read a predictor file; a file of another kind, or of an incompatible version,
    or one that no longer predicts what it did when saved, is a `PredictorError`."""
    path = Path(path)
    manifest, arrays = _read(path)
    try:
        pred = _from_payload(manifest, arrays)
    except PredictorError as exc:
        raise PredictorError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise PredictorError(f"{path}: malformed predictor file ({type(exc).__name__}: {exc})") from None
    _verify(path, pred, manifest)
    return pred


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if MANIFEST not in names or ARRAYS not in names:
                raise PredictorError(f"{path} is a zip archive but not a hatprof predictor "
                                     f"(no {MANIFEST} and {ARRAYS})")
            manifest = json.loads(archive.read(MANIFEST))
            with np.load(io.BytesIO(archive.read(ARRAYS)), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise PredictorError(f"no such predictor file: {path}") from None
    except zipfile.BadZipFile:
        raise PredictorError(f"{path} is not a hatprof predictor file ({_sniff(path)})") from None
    except (OSError, ValueError) as exc:
        raise PredictorError(f"cannot read predictor file {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PredictorError(f"{path} is not a hatprof predictor file (its {MANIFEST} says "
                             f"format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        saved = manifest.get("saved_with", {}).get("hatprof", "?")
        raise PredictorError(f"{path} has predictor format version {version}, written by hatprof "
                             f"{saved}; this hatprof reads up to version {FORMAT_VERSION}: upgrade it")
    return manifest, arrays


def _sniff(path: Path) -> str:
    """A guess at what a non-predictor file is, for the error message."""
    head = path.read_bytes()[:64]
    if head.startswith(b"\x80"):
        return "it looks like a pickle; hatprof never stores predictors as pickles"
    if head.lstrip().startswith(b"{"):
        return "it is JSON, not a predictor archive"
    if b"," in head:
        return "it looks like a CSV; pass it as --data"
    return "not a zip archive"


def _check_frame(pred: Predictor) -> pd.DataFrame | None:
    base = getattr(pred, "base", pred)
    rows = getattr(base, "check_rows", None)
    return rows if rows is not None and len(rows) else None


def _verify(path: Path, pred: Predictor, manifest: dict) -> None:
    """Compare predictions for the stored rows with those recorded when saving."""
    expected = manifest.get("self_check")
    check = _check_frame(pred)
    saved, now = manifest.get("saved_with", {}), library_versions()
    changed = ", ".join(f"{k} {saved.get(k)} -> {now[k]}" for k in now if saved.get(k) != now[k])
    if expected is None or check is None:
        log.warning("%s carries no self-check; its predictions cannot be verified", path)
        return
    try:
        got = pred.predict_frame(check)["predicted_ms"].to_numpy()
    except HatprofError as exc:
        raise PredictorError(f"{path}: the predictor cannot predict its own check rows: {exc}") from None
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=CHECK_RTOL, atol=0):
        raise PredictorError(f"{path}: predictions differ from those recorded when it was saved "
                             f"(library changes: {changed or 'none'}); retrain the predictor")
    if changed:
        log.info("%s was saved under other library versions (%s); its self-check passed", path, changed)
