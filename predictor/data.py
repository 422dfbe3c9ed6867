"""Latency rows as predictors see them: checks, targets, data settings and hash.

Rows come from `profiler.dataset.read_dataset` (or any DataFrame of that schema).

A predictor learns from one device and one measurement setting; rows of several
devices, spaces or workloads are refused rather than silently mixed.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from profiler.errors import PredictorError
from profiler.vocabulary import (ARCH_COLUMN, DECODER_LATENCY_COLUMN, ENCODER_LATENCY_COLUMN, HAT_FEATURES,
                                 TOTAL_LATENCY_COLUMN)

#: Targets a predictor can learn: the two timed parts, or their sum.
PART_TARGETS = ("encoder", "decoder")
TOTAL_TARGET = ("total",)

#: Settings that must take one value in a training set (an empty cell counts as unknown).
SINGLE_VALUED = ("device", "space", "runtime", "format", "seq_len", "beam", "vocab", "threads", "reference")
#: Further settings recorded in a predictor's metadata when present.
RECORDED = ("host", "runs", "warmup", "trim", "rounds", "cpus", "latency_statistic")


def check_space(space: Any, df: pd.DataFrame, source: str) -> None:
    """Refuse rows of another design space than a predictor's `space` (by name, and by content
    where the rows carry `space_digest`): its errors there are meaningless, not large."""
    if space is None or "space" not in df.columns:
        return
    names = sorted({str(v) for v in df["space"].dropna() if str(v)})
    digests = {str(v) for v in df.get("space_digest", pd.Series(dtype=str)).dropna() if str(v)}
    if names and names != [space.name]:
        raise PredictorError(f"{source} holds rows of space {', '.join(map(repr, names))}, the predictor is of "
                             f"space {space.name!r}; give rows of its space, or train a predictor on these")
    if digests and digests != {space.digest}:
        raise PredictorError(f"{source} holds rows of a space named {space.name!r} whose content differs from "
                             "the predictor's (another version of it?); train a predictor on these rows")


def has_arch(df: pd.DataFrame) -> bool:
    """Whether every row carries its full architecture (HAT's imported rows do not)."""
    if ARCH_COLUMN not in df.columns:
        return False
    cells = df[ARCH_COLUMN]
    return bool(cells.notna().all() and (cells.astype(str).str.strip() != "").all())


def has_hat_features(df: pd.DataFrame) -> bool:
    """Whether HAT's 10 feature columns are all present and complete."""
    if not set(HAT_FEATURES) <= set(df.columns):
        return False
    values = df[list(HAT_FEATURES)].apply(pd.to_numeric, errors="coerce")
    return bool(values.notna().all().all())


def check_inputs(df: pd.DataFrame, what: str = "data") -> None:
    """Raise unless every row has either its architecture or HAT's 10 features."""
    if df.empty:
        raise PredictorError(f"{what} has no rows")
    if has_arch(df) or has_hat_features(df):
        return
    missing = [c for c in HAT_FEATURES if c not in df.columns]
    if missing:
        raise PredictorError(
            f"{what} has neither a complete 'arch' column nor HAT's feature columns "
            f"(missing: {', '.join(missing)})")
    bad = df[list(HAT_FEATURES)].apply(pd.to_numeric, errors="coerce").isna().any(axis=1)
    raise PredictorError(f"{what} has empty or non-numeric HAT features in {int(bad.sum())} row(s) "
                         f"(first: row {_first_rows(bad)})")


def target_names(df: pd.DataFrame) -> tuple[str, ...]:
    """("encoder", "decoder") when both parts were timed, else ("total",)."""
    if ENCODER_LATENCY_COLUMN in df.columns and DECODER_LATENCY_COLUMN in df.columns:
        return PART_TARGETS
    if TOTAL_LATENCY_COLUMN in df.columns:
        return TOTAL_TARGET
    raise PredictorError(
        f"data has no latency target: needs {ENCODER_LATENCY_COLUMN!r} and {DECODER_LATENCY_COLUMN!r}, "
        f"or {TOTAL_LATENCY_COLUMN!r}")


def targets(df: pd.DataFrame, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Latency targets in ms by name, always including "total"; NaN or <= 0 is an error.

    The total is `latency_ms` when present, else the sum of the two parts.
    """
    names = names or target_names(df)
    columns = {"encoder": ENCODER_LATENCY_COLUMN, "decoder": DECODER_LATENCY_COLUMN}
    out = {name: _positive_ms(df, columns[name]) for name in names if name != "total"}
    if TOTAL_LATENCY_COLUMN in df.columns:
        out["total"] = _positive_ms(df, TOTAL_LATENCY_COLUMN)
    elif ENCODER_LATENCY_COLUMN in df.columns and DECODER_LATENCY_COLUMN in df.columns:
        out["total"] = _positive_ms(df, ENCODER_LATENCY_COLUMN) + _positive_ms(df, DECODER_LATENCY_COLUMN)
    else:
        raise PredictorError(f"data has no {TOTAL_LATENCY_COLUMN!r} column")
    return out


def measured_total(df: pd.DataFrame) -> np.ndarray:
    """The measured total latency of each row, in ms."""
    return targets(df)["total"]


def _positive_ms(df: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() | ~np.isfinite(values) | (values <= 0)
    if bad.any():
        raise PredictorError(f"{column} is missing, non-numeric or not positive in "
                             f"{int(bad.sum())} of {len(df)} row(s) (first: row {_first_rows(bad)})")
    return values.to_numpy(dtype=np.float64)


def _first_rows(mask: pd.Series, count: int = 3) -> str:
    return ", ".join(str(i) for i in mask[mask].index[:count])


def data_settings(df: pd.DataFrame) -> dict[str, Any]:
    """The measurement settings of the rows; several values of one setting is an error."""
    settings: dict[str, Any] = {}
    for column in SINGLE_VALUED + RECORDED:
        if column not in df.columns:
            continue
        values = [v for v in df[column].dropna().unique() if str(v).strip() != ""]
        if column in SINGLE_VALUED and len(values) > 1:
            shown = ", ".join(sorted(map(str, values))[:5])
            raise PredictorError(f"data mixes {len(values)} values of {column!r} ({shown}); "
                                 f"train one predictor per {column}")
        if values:
            settings[column] = _plain(values[0]) if len(values) == 1 else sorted(map(_plain, values))
    return settings


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar: numpy scalars become Python ones, integral floats ints."""
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def data_hash(features: np.ndarray, ys: dict[str, np.ndarray]) -> str:
    """SHA-256 of the float64 feature matrix and targets a predictor was fitted on."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(features, dtype=np.float64).tobytes())
    for name in sorted(ys):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(ys[name], dtype=np.float64).tobytes())
    return digest.hexdigest()
