"""Latency datasets: HAT's CSV columns first, then hatprof's, plus a sidecar of raw samples.

A dataset file belongs to one device and one measurement setting (`SETTINGS`);
appending rows measured otherwise is refused, as pyperf refuses to mix runs.
Rows are written one at a time and fsynced, the raw samples (`<name>.raw.jsonl`)
before the CSV row, so a killed run loses at most the row in flight and every
CSV row has its samples; `--resume` repairs a torn last line and skips the
architectures already present.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import math
import os
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from profiler.errors import DatasetError, HatprofError, SpaceError
from profiler.convergence import interval
from profiler.files import check_writable, fsync_dir, write_atomically
from profiler.protocol import ROUND_SPREAD_LIMIT, Measurement, TimingProtocol, spread
from profiler.space import ArchConfig, DesignSpace, feature_outside, infer_space
from profiler.vocabulary import HAT_COLUMNS, HAT_FEATURES, HAT_LATENCY_COLUMNS  # noqa: F401 (re-exported)

try:  # advisory lock against two writers of one file; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)

#: The settings every row of one file shares: what was measured (the space by name and by
#: content), where (device, host, CPU model), with what (runtime and its version, format) and how
#: (the timing protocol; `precision` 0 is HAT's fixed protocol; `reference` the duet's reference
#: architecture, `NO_REFERENCE` outside duet mode).
SETTINGS = ("space", "space_digest", "device", "host", "cpu_model", "runtime", "runtime_version", "format",
            "runs", "warmup", "trim", "rounds", "precision", "max_rounds", "threads", "seq_len", "beam", "vocab",
            "reference")
NO_REFERENCE = "none"
_INT_SETTINGS = frozenset({"runs", "warmup", "rounds", "max_rounds", "threads", "seq_len", "beam", "vocab"})
_FRACTION_SETTINGS = {"trim": 0.5, "precision": 1.0}
_STAT_COLUMNS = ("latency_median_ms", "latency_min_ms", "cv_encoder", "cv_decoder",
                 "round_spread", "interval", "other_cpu", "unstable")
#: How a row's label was reached: rounds kept and discarded (and why), time spent, heat waits, and
#: in duet mode the reference's latency its runs were restated with (encoder + decoder).
_QUALITY_COLUMNS = ("converged", "rounds_used", "rounds_discarded", "discarded_why", "device_s", "gate_wait_s",
                    "reference_ms")
COLUMNS = (HAT_COLUMNS + ("latency_ms", "arch_id", "arch") + SETTINGS + ("cpus",)
           + _STAT_COLUMNS + _QUALITY_COLUMNS + ("measured_at",))
_TEXT_COLUMNS = ("arch_id", "arch", "space", "space_digest", "device", "host", "cpu_model", "runtime",
                 "runtime_version", "format", "cpus", "discarded_why", "measured_at", "reference")
_NS_PER_MS = 1e6
#: Floats must read back exactly; pandas 3 does so by default and deprecates the option.
_EXACT_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def raw_path_for(path: str | os.PathLike) -> Path:
    """The raw-samples sidecar of a dataset: `x.csv` -> `x.raw.jsonl`."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower() == ".csv" else path
    return stem.with_name(stem.name + ".raw.jsonl")


def _cell(value: Any) -> str:
    """A CSV cell; floats in their shortest exact form, so reading back gives the same number."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DatasetError(f"refusing to write the non-finite value {value}")
        return repr(value)
    return str(value)


def _setting_text(name: str, value: Any) -> str:
    """The canonical text of one setting (what the CSV holds and what is compared); idempotent."""
    if name in _INT_SETTINGS:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DatasetError(f"setting {name} must be a non-negative integer, got {value!r}")
        return str(value)
    if name in _FRACTION_SETTINGS:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not 0 <= number < _FRACTION_SETTINGS[name]:
            raise DatasetError(f"setting {name} must be a number in [0, {_FRACTION_SETTINGS[name]:g}), got {value!r}")
        return repr(number)
    if not isinstance(value, str) or not value or "\n" in value:
        raise DatasetError(f"setting {name} must be a non-empty one-line string, got {value!r}")
    return value


def normalize_settings(settings: Mapping[str, Any]) -> dict[str, str]:
    """Check a settings mapping has exactly `SETTINGS` and give each its canonical text."""
    if not isinstance(settings, Mapping):
        raise DatasetError("dataset settings must be a mapping")
    missing = [s for s in SETTINGS if s not in settings]
    unknown = sorted(set(settings) - set(SETTINGS))
    if missing or unknown:
        raise DatasetError(f"dataset settings: missing {missing or 'none'}, unknown {unknown or 'none'}")
    return {name: _setting_text(name, settings[name]) for name in SETTINGS}


def make_settings(space: DesignSpace, protocol: TimingProtocol, *, device: str, host: str, cpu_model: str,
                  runtime: str, runtime_version: str, fmt: str, reference: str = NO_REFERENCE) -> dict[str, str]:
    """The settings of a measurement run, from its space, protocol and target."""
    return normalize_settings({
        "space": space.name, "space_digest": space.digest, "device": device, "host": host,
        "cpu_model": cpu_model, "runtime": runtime, "runtime_version": runtime_version, "format": fmt,
        "runs": protocol.runs, "warmup": protocol.warmup, "trim": protocol.trim, "rounds": protocol.rounds,
        "precision": protocol.precision, "max_rounds": protocol.max_rounds, "threads": protocol.threads,
        "seq_len": protocol.seq_len, "beam": protocol.beam, "vocab": space.tgt_vocab, "reference": reference,
    })


def _csv_line(values: Iterable[Any]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([_cell(v) for v in values])
    return buffer.getvalue().encode()


def _complete_part(data: bytes) -> bytes:
    """`data` up to its last newline: a line without one was torn by a kill mid-write."""
    return data[:data.rfind(b"\n") + 1]


class DatasetWriter:
    """Appends measured rows to one dataset file (and its raw sidecar), durably, one at a time."""

    def __init__(self, path: str | os.PathLike, settings: Mapping[str, Any], resume: bool = False) -> None:
        self.path = Path(path)
        self.raw_path = raw_path_for(self.path)
        self.settings = normalize_settings(settings)
        self.done_ids: set[str] = set()
        if self.path.exists() and not resume:
            raise DatasetError(f"{self.path} already exists; use --resume to add to it")
        if self.raw_path.exists() and not resume:
            raise DatasetError(f"{self.raw_path} already exists; use --resume to add to it")
        check_writable(self.path, DatasetError)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._csv = open(self.path, "ab")
        except OSError as exc:
            raise DatasetError(f"cannot write {self.path}: {exc.strerror}") from None
        try:
            self._lock()
            data = self.path.read_bytes()
            complete = _complete_part(data)
            if complete:
                self.done_ids = self._check_existing(complete.decode("utf-8", errors="replace"))
            # Every check passed: only now repair what a killed run left behind.
            if len(complete) < len(data):
                logger.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run",
                               self.path, len(data) - len(complete))
                os.truncate(self.path, len(complete))
            self._repair_raw()
            self._raw = open(self.raw_path, "ab")
        except BaseException:
            self._csv.close()
            raise
        self._started_empty = not complete
        if not complete:
            self._append(self._csv, _csv_line(COLUMNS))
            fsync_dir(self.path.parent)

    def _lock(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._csv.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DatasetError(f"{self.path} is being written by another process") from None

    def _check_existing(self, text: str) -> set[str]:
        """The arch_ids in the file; refuses a foreign schema or rows measured with other settings."""
        rows = csv.reader(io.StringIO(text))
        header = next(rows, [])
        if tuple(header) != COLUMNS:
            raise DatasetError(f"{self.path} does not have hatprof's measured-dataset columns "
                               "(an imported or foreign file?); write to a new file")
        done = set()
        for line_no, row in enumerate(rows, start=2):
            if len(row) != len(COLUMNS):
                raise DatasetError(f"{self.path} line {line_no} has {len(row)} fields, expected {len(COLUMNS)}")
            values = dict(zip(COLUMNS, row))
            for name in SETTINGS:
                if values[name] != self.settings[name]:
                    raise DatasetError(
                        f"{self.path} was measured with {name}={values[name]!r} (line {line_no}), this run "
                        f"has {name}={self.settings[name]!r}; use a new file for other settings")
            done.add(values["arch_id"])
        return done

    def _repair_raw(self) -> None:
        """Keep only complete raw lines of rows the CSV has, once each."""
        try:
            data = self.raw_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise DatasetError(f"cannot read {self.raw_path}: {exc.strerror}") from None
        kept: list[bytes] = []
        seen: set[str] = set()
        for line in _complete_part(data).splitlines(keepends=True):
            try:
                arch_id = json.loads(line).get("arch_id")
            except (ValueError, AttributeError):
                continue
            if arch_id in self.done_ids and arch_id not in seen:
                kept.append(line)
                seen.add(arch_id)
        if b"".join(kept) != data:
            logger.warning("%s: dropping %d raw line(s) that are partial or have no CSV row",
                           self.raw_path, len(data.splitlines()) - len(kept))
            write_atomically(self.raw_path, b"".join(kept), DatasetError)
        missing = self.done_ids - seen
        if missing:
            logger.warning("%s: %d row(s) have no raw samples in %s", self.path, len(missing), self.raw_path)

    @staticmethod
    def _append(f, data: bytes) -> None:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

    def write(self, row: Mapping[str, Any], raw: Mapping[str, Any]) -> None:
        """Append one row (from `row_from_measurement`): its raw samples first, then the CSV line."""
        if self._csv.closed:
            raise DatasetError(f"{self.path} is closed")
        missing = [c for c in COLUMNS if c not in row]
        unknown = sorted(set(row) - set(COLUMNS))
        if missing or unknown:
            raise DatasetError(f"dataset row: missing {missing or 'none'}, unknown {unknown or 'none'}")
        for name in SETTINGS:
            if _cell(row[name]) != self.settings[name]:
                raise DatasetError(f"row has {name}={row[name]!r} but {self.path} holds "
                                   f"{name}={self.settings[name]!r}; refusing to mix settings")
        arch_id = row["arch_id"]
        if not arch_id or raw.get("arch_id") != arch_id:
            raise DatasetError("a measured row needs an arch_id, the same in its raw samples")
        if arch_id in self.done_ids:
            raise DatasetError(f"{self.path} already has a row for architecture {arch_id}")
        try:
            self._append(self._raw, (json.dumps(raw, separators=(",", ":")) + "\n").encode())
            self._append(self._csv, _csv_line(row[c] for c in COLUMNS))
        except OSError as exc:
            raise DatasetError(f"cannot write {self.path}: {exc.strerror}") from None
        self.done_ids.add(arch_id)

    def close(self) -> None:
        """Close the files; a file this writer began that got no row is removed, not left
        behind as a header alone (a rerun would then find nothing to resume)."""
        if self._started_empty and not self.done_ids:
            self.path.unlink(missing_ok=True)
            self.raw_path.unlink(missing_ok=True)
        self._raw.close()
        self._csv.close()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class RowQuality:
    """How a row's label was reached (see `profiler.convergence`): None `converged` for HAT's
    fixed protocol; the rounds accepted (when that is not all of the label's: none was, and
    the label, flagged, is made of all rounds); the rounds discarded by reason, with their
    samples; device and heat-wait time; the duet's scale (None outside duet mode)."""

    converged: bool | None = None
    rounds_used: int | None = None
    rounds_discarded: Mapping[str, int] = field(default_factory=dict)
    device_s: float = 0.0
    gate_wait_s: float = 0.0
    discarded_rounds: list[Mapping[str, Any]] = field(default_factory=list)
    reference_ms: float | None = None

    def columns(self, rounds: int) -> dict[str, Any]:
        """The quality columns of a row whose label is made of `rounds` rounds."""
        return {"converged": self.converged, "rounds_used": rounds if self.rounds_used is None else self.rounds_used,
                "rounds_discarded": sum(self.rounds_discarded.values()),
                "discarded_why": " ".join(f"{k}={v}" for k, v in sorted(self.rounds_discarded.items())),
                "device_s": self.device_s, "gate_wait_s": self.gate_wait_s, "reference_ms": self.reference_ms}


def _statistics(encoder: Measurement, decoder: Measurement, converged: bool | None = None) -> dict[str, Any]:
    """Every statistic column of a row, from the two measurements alone (and, for a converging
    measurement, whether it converged: then `unstable` means it did not)."""
    if len(encoder.round_sizes) != len(decoder.round_sizes):  # a round may keep more runs of one part
        raise DatasetError(f"encoder and decoder were timed in different rounds "
                           f"({list(encoder.round_sizes)} vs {list(decoder.round_sizes)})")
    total_rounds = [e + d for e, d in zip(encoder.round_trimmed_means_ms, decoder.round_trimmed_means_ms)]
    round_spread = spread(total_rounds)
    others = [o for o in (encoder.max_other_cpu, decoder.max_other_cpu) if o is not None]
    return {
        "latency_mean_encoder": encoder.trimmed_mean_ms,
        "latency_mean_decoder": decoder.trimmed_mean_ms,
        "latency_std_encoder": encoder.std_ms,
        "latency_std_decoder": decoder.std_ms,
        "latency_ms": encoder.trimmed_mean_ms + decoder.trimmed_mean_ms,
        # Encoder and decoder are timed apart, so the row's median and minimum are sums of parts.
        "latency_median_ms": encoder.median_ms + decoder.median_ms,
        "latency_min_ms": encoder.min_ms + decoder.min_ms,
        "cv_encoder": encoder.cv,
        "cv_decoder": decoder.cv,
        "round_spread": round_spread,
        "interval": interval(total_rounds),
        "other_cpu": max(others) if others else None,
        "unstable": (not converged if converged is not None
                     else encoder.unstable or decoder.unstable or round_spread > ROUND_SPREAD_LIMIT),
    }


def row_from_measurement(arch: ArchConfig, space: DesignSpace, settings: Mapping[str, Any],
                         encoder: Measurement, decoder: Measurement, environment: Mapping[str, Any],
                         quality: RowQuality | None = None,
                         measured_at: dt.datetime | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The CSV row and the raw-samples line of one measured architecture (the label's samples
    in `encoder_ms`/`decoder_ms`, the discarded rounds' apart)."""
    quality = quality or RowQuality()
    settings = normalize_settings(settings)
    arch.validate(space)
    if settings["space"] != space.name or settings["vocab"] != str(space.tgt_vocab):
        raise DatasetError(f"settings name space {settings['space']!r} with vocab {settings['vocab']}, "
                           f"but the architecture is from {space.name!r} with vocab {space.tgt_vocab}")
    fixed = float(settings["precision"]) == 0
    for part, m in (("encoder", encoder), ("decoder", decoder)):
        if repr(m.trim) != settings["trim"] or fixed and (
                str(m.n) != settings["runs"] or str(len(m.round_sizes)) != settings["rounds"]):
            raise DatasetError(f"the {part} was timed with trim={m.trim}, {m.n} runs in {len(m.round_sizes)} "
                               f"rounds; the settings say trim={settings['trim']}, runs={settings['runs']}, "
                               f"rounds={settings['rounds']}")
    when = measured_at or dt.datetime.now(dt.timezone.utc)
    row: dict[str, Any] = dict(zip(HAT_FEATURES, arch.hat_features()))
    row.update(_statistics(encoder, decoder, quality.converged))
    row.update(quality.columns(len(encoder.round_sizes)))
    row.update(settings)
    row.update(arch_id=arch.arch_id, arch=arch.canonical_json(), cpus=str(environment.get("affinity", "")),
               measured_at=when.astimezone(dt.timezone.utc).isoformat(timespec="seconds"))
    raw = {
        "arch_id": arch.arch_id,
        "encoder_ms": [s / _NS_PER_MS for s in encoder.samples_ns],
        "decoder_ms": [s / _NS_PER_MS for s in decoder.samples_ns],
        "round_sizes": list(encoder.round_sizes),
        "decoder_round_sizes": list(decoder.round_sizes),
        "other_cpu": {"encoder": list(encoder.other_cpu), "decoder": list(decoder.other_cpu)},
        "converged": quality.converged,
        "discarded_rounds": list(quality.discarded_rounds),
        "environment": dict(environment),
    }
    return {c: row[c] for c in COLUMNS}, raw


def measurements_from_raw(raw_line: str | Mapping[str, Any], trim: float) -> tuple[Measurement, Measurement]:
    """The encoder and decoder measurements of a row's label, rebuilt from its raw-samples line.

    Samples are stored in ms; ns/1e6 as a double maps back to the same integer ns exactly.
    """
    try:
        raw = json.loads(raw_line) if isinstance(raw_line, str) else raw_line
        return tuple(Measurement(  # type: ignore[return-value]
            samples_ns=tuple(round(ms * _NS_PER_MS) for ms in raw[f"{part}_ms"]),
            round_sizes=tuple(raw.get(f"{part}_round_sizes") or raw["round_sizes"]),
            other_cpu=tuple(raw["other_cpu"][part]),
            trim=trim,
        ) for part in ("encoder", "decoder"))
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"malformed raw-samples line: {exc}") from None
    except HatprofError as exc:
        raise DatasetError(f"inconsistent raw-samples line: {exc}") from None


def recompute_from_raw(raw_line: str | Mapping[str, Any], trim: float) -> dict[str, Any]:
    """The statistic columns of a row, recomputed from its raw-samples line."""
    raw = json.loads(raw_line) if isinstance(raw_line, str) else raw_line
    return _statistics(*measurements_from_raw(raw, trim), raw.get("converged"))


#: Which latency a row states: HAT's trimmed mean (as written), or one recomputed from the raw samples.
LATENCY_STATISTICS = ("trimmed-mean", "median", "min")


def read_dataset(path: str | os.PathLike, statistic: str = "trimmed-mean") -> pd.DataFrame:
    """A latency CSV (hatprof's or HAT's 14 columns), checked: HAT columns present, numeric, no NaN.

    With `statistic` "median" or "min", the encoder, decoder and total latencies are
    recomputed from the raw-samples sidecar as that statistic of each part's samples, and a
    `latency_statistic` column says so (on a machine with bursts of foreign load the minimum
    repeats where the trimmed mean does not; see benchmarks/bench_protocol.py).
    """
    df = _read_csv(Path(path))
    if statistic == "trimmed-mean":
        return df
    if statistic not in LATENCY_STATISTICS:
        raise DatasetError(f"unknown latency statistic {statistic!r} (known: {', '.join(LATENCY_STATISTICS)})")
    return _restate(df, raw_path_for(path), statistic)


def _restate(df: pd.DataFrame, raw_path: Path, statistic: str) -> pd.DataFrame:
    reduce = {"median": statistics.median, "min": min}[statistic]
    try:
        lines = raw_path.read_text().splitlines()
    except OSError:
        raise DatasetError(f"the {statistic} latency needs the raw samples in {raw_path}") from None
    parts: dict[str, tuple[float, float]] = {}
    for line in lines:
        try:
            raw = json.loads(line)
            parts[raw["arch_id"]] = (reduce(raw["encoder_ms"]), reduce(raw["decoder_ms"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"malformed raw-samples line in {raw_path}: {exc}") from None
    missing = [a for a in df["arch_id"] if a not in parts] if "arch_id" in df.columns else ["(no arch_id)"]
    if missing:
        raise DatasetError(f"{raw_path} has no raw samples for {len(missing)} row(s), e.g. {missing[0]}")
    df = df.copy()
    df["latency_mean_encoder"] = [parts[a][0] for a in df["arch_id"]]
    df["latency_mean_decoder"] = [parts[a][1] for a in df["arch_id"]]
    df["latency_ms"] = df["latency_mean_encoder"] + df["latency_mean_decoder"]
    df["latency_statistic"] = statistic
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DatasetError(f"no such dataset file: {path}")
    if path.is_dir():
        raise DatasetError(f"{path} is a directory, not a dataset file")
    try:
        df = pd.read_csv(path, dtype={c: str for c in _TEXT_COLUMNS}, **_EXACT_FLOATS)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"cannot read {path} as CSV: {first}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None
    missing = [c for c in HAT_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{path} is not a latency dataset: missing column(s) {', '.join(missing)}")
    for column in HAT_COLUMNS:
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values.isna()
        if bad.any():
            lines = ", ".join(str(i + 2) for i in bad[bad].index[:5])
            raise DatasetError(f"{path}: column {column} is empty or not a number on line(s) {lines}")
        df[column] = values
    for column in _TEXT_COLUMNS:
        if column in df.columns:
            df[column] = df[column].fillna("")
    return df


def import_hat(src: str | os.PathLike, out: str | os.PathLike, device: str | None = None,
               space: DesignSpace | None = None) -> tuple[int, DesignSpace]:
    """Convert one of HAT's published latency CSVs to this schema (features only: no arch); returns
    the rows and their design space (`space`, checked, or the smallest built-in one that holds them),
    which the rows record so that predictors and searches can tell spaces apart."""
    src, out = Path(src), Path(out)
    if out.exists():
        raise DatasetError(f"{out} already exists; choose another --out")
    try:
        text = src.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"no such file: {src}") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{src} is not a text CSV file") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {src}: {exc.strerror}") from None
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    except csv.Error as exc:
        raise DatasetError(f"cannot read {src} as CSV: {exc}") from None
    if not rows:
        raise DatasetError(f"{src} is empty")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in HAT_COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"{src} is not a HAT latency CSV: missing column(s) {', '.join(missing)}")
    extra = [h for h in header if h not in HAT_COLUMNS and h and not h.startswith("Unnamed")]
    if extra:
        logger.warning("%s: ignoring column(s) HAT's format does not have: %s", src, ", ".join(extra))
    index = {c: header.index(c) for c in HAT_COLUMNS}
    device = device or src.stem
    parsed = []
    for line_no, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DatasetError(f"{src} line {line_no} has {len(row)} fields, the header has {len(header)}")
        values = {c: row[i].strip() for c, i in index.items()}
        try:
            numbers = {c: float(v) for c, v in values.items()}
        except ValueError:
            raise DatasetError(f"{src} line {line_no}: a HAT column is not a number") from None
        if not all(math.isfinite(v) for v in numbers.values()):
            raise DatasetError(f"{src} line {line_no}: a HAT column is not finite")
        parsed.append((line_no, values, numbers))
    if not parsed:
        raise DatasetError(f"{src} has a header but no rows")
    if space is None:
        try:
            space = infer_space([numbers for _, _, numbers in parsed])
        except SpaceError as exc:
            raise DatasetError(f"{src}: {exc}") from None
    lines = [_csv_line(COLUMNS)]
    for line_no, values, numbers in parsed:
        outside = feature_outside(space, numbers)
        if outside is not None:
            raise DatasetError(f"{src} line {line_no}: {outside} is outside space {space.name!r}")
        out_row = dict.fromkeys(COLUMNS, "")
        out_row.update(values)
        out_row.update(device=device, space=space.name, space_digest=space.digest,
                       latency_ms=numbers["latency_mean_encoder"] + numbers["latency_mean_decoder"])
        lines.append(_csv_line(out_row[c] for c in COLUMNS))
    write_atomically(out, b"".join(lines), DatasetError)
    return len(parsed), space


def _plain(value: Any) -> Any:
    """A pandas/numpy scalar as a plain JSON value (integral floats as ints)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def dataset_info(path: str | os.PathLike) -> dict[str, Any]:
    """Rows, devices, settings, latency range and unstable count of a dataset, JSON-able."""
    df = read_dataset(path)
    latency = (df["latency_ms"] if "latency_ms" in df.columns and df["latency_ms"].notna().all()
               else df["latency_mean_encoder"] + df["latency_mean_decoder"])
    settings = {}
    for name in SETTINGS:
        if name in df.columns:
            values = sorted({_plain(v) for v in df[name].dropna() if v != ""}, key=str)
            settings[name] = values
    unstable = None
    if "unstable" in df.columns and df["unstable"].notna().any():  # imported rows leave it empty
        unstable = int(df["unstable"].astype(str).str.lower().eq("true").sum())
    quality = None
    if "rounds_discarded" in df.columns and df["rounds_discarded"].notna().any():  # measured, not imported
        intervals = pd.to_numeric(df["interval"], errors="coerce").dropna()
        quality = {"re_measured": int((pd.to_numeric(df["rounds_discarded"]) > 0).sum()),
                   "interval_median": float(intervals.median()) if len(intervals) else None,
                   "interval_max": float(intervals.max()) if len(intervals) else None,
                   "device_s_per_row": float(pd.to_numeric(df["device_s"]).mean())}
    raw = raw_path_for(path)
    return {
        "path": str(path),
        "rows": int(len(df)),
        "devices": settings.get("device", []),
        "settings": settings,
        "latency_ms": ({"min": float(latency.min()), "median": float(latency.median()),
                        "max": float(latency.max())} if len(df) else None),
        "unstable": unstable,
        "quality": quality,
        "raw_sidecar": str(raw) if raw.exists() else None,
    }
