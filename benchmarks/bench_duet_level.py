"""Does a duet round's ratio hold in every state of the host? Restated rounds against the reference's level.

`--repeats` times, `hatprof measure --duet` measures one compact SubTransformer (`--seed`) in
a fresh process, alternating with the default protocol (for comparison; `--protocols duet`
leaves it out). From each duet row's sidecar, every round, accepted or discarded: the
reference's level (`profiler.duet.reference_level`: the median of its runs over the machine's
scale) and the round's restated total (encoder + decoder trimmed mean of its runs restated by
their brackets). Under the duet's premise the restated total does not depend on the level.
Reported: the least-squares slope of the restated total on the level, relative to the total at
level 1, and their correlation; the median restated total of the rounds within
`profiler.duet.LEVEL_LIMIT` of the scale and of those beyond; the machine's calibration rounds
(the trimmed means the scale was made of, over the scale); each row's label, flag, interval
and discarded rounds; and each row's plain label, HAT's trimmed mean of the same rounds' clean
runs as timed (not restated): what gating rounds on the reference's level alone would give.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_duet_level.py       # -> results/duet_level.json
    # spread over an hour or more, the rows and their sidecars kept
    PYTHONPATH=. .venv/bin/python benchmarks/bench_duet_level.py --repeats 10 --spacing 600 --keep DIR
    # the same analysis of duet sidecars already written (plain or gzipped; the CSV beside each)
    PYTHONPATH=. .venv/bin/python benchmarks/bench_duet_level.py --sidecars 'DIR/*.raw.jsonl.gz' --out OUT
    # (default rows' sidecars among them are reported beside the duet rows, as when measuring)

Run it with nothing else on the machine (`uptime` before and after).
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profiler.artifacts import cache_root  # noqa: E402
from profiler.canary_history import machine_key  # noqa: E402
from profiler.convergence import CANARY_LIMIT, PARTS  # noqa: E402
from profiler.dataset import measurements_from_raw, raw_path_for  # noqa: E402
from profiler.duet import (LEVEL_LIMIT, CalibrationHistory, brackets_ns, reference_level, restated,  # noqa: E402
                          steady_runs)
from profiler.gate import POLL_S  # noqa: E402
from profiler.metadata import cpu_model  # noqa: E402
from profiler.protocol import RoundResult, trimmed_mean  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROTOCOLS = {"duet": ["--duet"], "default": []}


def _read_sidecar(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.loads(f.readline())


def _protocol(sidecar: Path) -> str:
    """"duet" or "default": which mode wrote a sidecar."""
    return "duet" if "duet" in _read_sidecar(sidecar)["environment"] else "default"


def _csv_beside(sidecar: Path) -> Path:
    return sidecar.with_name(sidecar.name.split(".raw.jsonl")[0] + ".csv")


def _ns(values_ms: list[float]) -> tuple[int, ...]:
    return tuple(int(round(v * 1e6)) for v in values_ms)


def duet_rounds(raw: dict, trim: float) -> list[dict]:
    """Every round of a duet row: its verdict, the reference's level and the restated total (ms).
    The label's rounds are in the sidecar restated (their clean runs); a discarded round's runs
    as timed, restated here by their brackets."""
    env = raw["environment"]
    scales_ns = {part: ms * 1e6 for part, ms in env["duet"]["scale_ms"].items()}
    label_only = any(r["verdict"] is None for r in env["rounds"])
    encoder, decoder = measurements_from_raw(raw, trim)
    label_totals = iter([e + d for e, d in zip(encoder.round_trimmed_means_ms, decoder.round_trimmed_means_ms)])
    discarded = iter(raw["discarded_rounds"])
    out = []
    for r in env["rounds"]:
        references = {part: RoundResult((), None, tuple(r["canary_ns"][part])) for part in PARTS}  # their runs only
        if r["verdict"] is None or not label_only:
            total = next(label_totals)
        else:
            timed = next(discarded)
            total = sum(trimmed_mean(restated(RoundResult(_ns(timed[f"{part}_ms"]), None, references[part].canary_ns),
                                              scales_ns[part]).samples_ns, trim) / 1e6 for part in PARTS)
        gate = r.get("gate") or {}
        out.append({"verdict": r["verdict"], "level": reference_level(references, scales_ns), "restated_ms": total,
                    "probe_ns": (gate.get("seen") or {}).get("canary_ns"), "gate_limit_ns": gate.get("slow_ns"),
                    "waited_s": gate.get("waited_s"), "gate_timed_out": gate.get("timed_out")})
    return out


def plain_label_ms(raw: dict, trim: float) -> float | None:
    """HAT's trimmed mean of the label rounds' clean runs as timed, not restated: the label a
    mode that kept only the rounds duet mode keeps (reference at its level, runs whose
    brackets are steady) would report. The sidecar holds those runs restated; each is timed
    time = restated x bracket / scale (None when no round was kept)."""
    env = raw["environment"]
    label_rounds = [r for r in env["rounds"] if r["verdict"] is None]
    sizes = {"encoder": raw["round_sizes"], "decoder": raw.get("decoder_round_sizes") or raw["round_sizes"]}
    total = 0.0
    for part in PARTS:
        restated_ms, timed_ms, start = raw[f"{part}_ms"], [], 0
        for r, n in zip(label_rounds, sizes[part]):
            references = RoundResult((0,) * (len(r["canary_ns"][part]) - 1), None, tuple(r["canary_ns"][part]))
            brackets = brackets_ns(references)[np.array(steady_runs(references, CANARY_LIMIT))]
            timed_ms += list(np.asarray(restated_ms[start:start + n]) * brackets / 1e6 / env["duet"]["scale_ms"][part])
            start += n
        if not timed_ms:
            return None
        total += trimmed_mean(_ns(timed_ms), trim) / 1e6
    return total


def calibration_levels(raw: dict, cache_dir: Path) -> list[float] | None:
    """The trimmed means the machine's scale was made of, encoder + decoder, over the scale (from
    the cache's reference histories of this machine: the one whose level is the row's scale)."""
    env = raw["environment"]
    scale_ms = env["duet"]["scale_ms"]
    histories = {}
    for part in PARTS:
        for path in (cache_dir / "canary").glob(f"{machine_key(env)}-reference-*-{part}.json"):
            history = CalibrationHistory(path)
            if history.level_ns() is not None and abs(history.level_ns() / 1e6 / scale_ms[part] - 1) < 1e-9:
                histories[part] = history.probes
    if set(histories) != set(PARTS):
        return None
    total = sum(scale_ms.values()) * 1e6
    return [(e + d) / total for e, d in zip(histories["encoder"], histories["decoder"])]


def analyse(rows: list[dict]) -> dict:
    """The restated total against the reference's level, over every round of the duet rows; how
    well the gate's probe before each round foretold that level (the canary's; in
    results/duet_level_gate.json, measured at commit f66cae1, five whole runs of the
    reference); and how often and how long the gate waited."""
    rounds = [r for row in rows if row["protocol"] == "duet" for r in row["rounds"]]
    level = np.array([r["level"] for r in rounds])
    total = np.array([r["restated_ms"] for r in rounds])
    slope, intercept = np.polyfit(level, total, 1)
    near = np.abs(level - 1) <= LEVEL_LIMIT
    probed = [(r["probe_ns"], r["level"]) for r in rounds if r.get("probe_ns")]

    def median(values: np.ndarray) -> float | None:
        return float(np.median(values)) if len(values) else None
    return {"rounds": len(rounds), "level_range": [float(level.min()), float(level.max())],
            "slope_per_unit_level": float(slope / (slope + intercept)),  # relative to the total at level 1
            "correlation": float(np.corrcoef(level, total)[0, 1]),
            "within_limit": {"rounds": int(near.sum()), "median_restated_ms": median(total[near])},
            "beyond_limit": {"rounds": int((~near).sum()), "median_restated_ms": median(total[~near])},
            "probe_level_correlation": float(np.corrcoef(*zip(*probed))[0, 1]) if len(probed) > 2 else None,
            "gate": {"rounds_with_a_limit": sum(1 for r in rounds if r.get("gate_limit_ns")),
                     "rounds_waited": sum(1 for r in rounds if (r.get("waited_s") or 0) >= POLL_S),
                     "waits_ran_out": sum(1 for r in rounds if r.get("gate_timed_out")),
                     "wait_s": float(sum(r.get("waited_s") or 0 for r in rounds))}}


def row_summary(protocol: str, csv: Path, sidecar: Path) -> dict:
    row = pd.read_csv(csv).iloc[0]
    out = {"protocol": protocol, "latency_ms": float(row["latency_ms"]), "unstable": bool(row["unstable"]),
           "interval": None if pd.isna(row["interval"]) else float(row["interval"]),
           "rounds_used": int(row["rounds_used"]),
           "discarded_why": "" if pd.isna(row["discarded_why"]) else str(row["discarded_why"])}
    if protocol == "duet":
        raw = _read_sidecar(sidecar)
        out["rounds"] = duet_rounds(raw, float(row["trim"]))
        out["plain_label_ms"] = plain_label_ms(raw, float(row["trim"]))
    return out


def measure_rows(args: argparse.Namespace, folder: Path) -> list[tuple[str, Path, Path]]:
    """Measure `--repeats` times per protocol, each in a fresh process, `--spacing` seconds
    from one repeat's start to the next: (protocol, CSV, sidecar)."""
    measured = []
    protocols = {name: PROTOCOLS[name] for name in args.protocols.split(",")}
    for repeat in range(args.repeats):
        started = time.monotonic()
        for name, extra in protocols.items():
            out = folder / f"{name}-{repeat}.csv"
            subprocess.run([sys.executable, "-m", "hatprof", "measure", "--device", "local", "--space", "compact",
                            "--samples", "1", "--seed", str(args.seed), "--out", str(out), *extra],
                           check=True, capture_output=True, text=True)
            measured.append((name, out, raw_path_for(out)))
            print(f"{name} {repeat + 1}/{args.repeats}: {pd.read_csv(out)['latency_ms'].iloc[0]:.2f} ms",
                  file=sys.stderr)
        if repeat + 1 < args.repeats:
            time.sleep(max(0.0, args.spacing - (time.monotonic() - started)))
    return measured


def report(measured: list[tuple[str, Path, Path]], cache_dir: Path) -> dict:
    rows = [row_summary(*m) for m in measured]
    labels = [r["latency_ms"] for r in rows if r["protocol"] == "duet"]
    plain = [r["plain_label_ms"] for r in rows if r["protocol"] == "duet" and r["plain_label_ms"] is not None]
    default = [r for r in rows if r["protocol"] == "default"]
    first = next(sidecar for name, _, sidecar in measured if name == "duet")
    return {"rows": rows, "analysis": analyse(rows),
            "duet": {"labels_ms": labels, "flagged": sum(r["unstable"] for r in rows if r["protocol"] == "duet"),
                     "spread": _spread(labels)},
            # the same rounds, not restated (rows that kept a round)
            "plain": {"labels_ms": plain, "spread": _spread(plain) if plain else None},
            "default": {"labels_ms": [r["latency_ms"] for r in default], "flagged": sum(r["unstable"] for r in default),
                        "spread": _spread([r["latency_ms"] for r in default]) if default else None},
            "calibration_levels": calibration_levels(_read_sidecar(first), cache_dir)}


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="seed of the one sampled compact architecture")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--spacing", type=float, default=0.0,
                        help="seconds from one repeat's start to the next (default: back to back)")
    parser.add_argument("--keep", type=Path,
                        help="write the rows and their sidecars here (default: a temporary folder)")
    parser.add_argument("--protocols", default="duet,default", help="duet, and default for comparison")
    parser.add_argument("--sidecars", help="analyse these duet sidecars (a glob) instead of measuring")
    parser.add_argument("--cache-dir", type=Path, default=None, help="the artifact cache the calibration is kept in")
    parser.add_argument("--out", type=Path, default=RESULTS / "duet_level.json")
    args = parser.parse_args()
    if "duet" not in args.protocols.split(","):
        parser.error("--protocols must include duet: the analysis is of duet rows")
    result: dict = {"seed": args.seed, "level_limit": LEVEL_LIMIT,
                    "machine": {"host": os.uname().nodename, "cpu_model": cpu_model()}}
    cache_dir = cache_root(args.cache_dir)
    if args.sidecars:  # measured earlier: the load then is the measurer's to record
        paths = sorted(Path(p) for p in glob.glob(args.sidecars))
        result["sidecars"] = [p.name for p in paths]
        result.update(report([(_protocol(p), _csv_beside(p), p) for p in paths], cache_dir))
    else:
        result["load_before"] = os.getloadavg()
        with tempfile.TemporaryDirectory() as tmp:
            folder = args.keep or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            result.update(report(measure_rows(args, folder), cache_dir))
        result["load_after"] = os.getloadavg()
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
