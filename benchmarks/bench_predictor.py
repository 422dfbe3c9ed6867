"""Benchmark of the latency predictors: accuracy, learning curves, transfer, throughput.

    python benchmarks/bench_predictor.py [--data CSV] [--transfer-data CSV] [--out JSON]

Without `--data`, generated rows (`predictor.synthetic`) stand in for a measured dataset;
pass the bundled dataset to get the acceptance figures. Every model is trained on the
80% of HAT's seeded split and scored on the same 10% test rows, on the full data and on
its HAT-format view (HAT's 14 columns only); learning curves, 5-fold cross-validation of
the default model, a drift check (residuals against measurement order), transfer to a second device (k = 10 and 20 rows, against the default
model fitted on those rows alone) and batch prediction throughput on one core follow.
Results go to one JSON file, the picture next to it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profiler.dataset import LATENCY_STATISTICS, read_dataset  # noqa: E402
from profiler.space import load_space  # noqa: E402
from profiler.vocabulary import HAT_COLUMNS  # noqa: E402
from predictor.core import (DEFAULT_MODEL, MODELS, fit_prepared, library_versions,  # noqa: E402
                            model_spec, prepare)
from predictor.data import ARCH_COLUMN  # noqa: E402
from predictor.evaluation import (cross_validate, learning_curve, order_drift,  # noqa: E402
                                  plot_evaluation, run_comparison)
from predictor.synthetic import synthetic_frame  # noqa: E402
from predictor.transfer import evaluate_transfer  # noqa: E402
from predictor import train_predictor  # noqa: E402

log = logging.getLogger("bench_predictor")
RESULTS = Path(__file__).resolve().parent / "results"


def _records(table: pd.DataFrame) -> list[dict]:
    return json.loads(table.reset_index().to_json(orient="records", double_precision=6))


def throughput(df: pd.DataFrame, models: list[str], params: dict, n_archs: int, seed: int) -> dict:
    """Architectures per second of `predict_archs`, on one thread, best of three."""
    import torch

    out = {}
    torch.set_num_threads(1)
    with threadpool_limits(1):
        for name in models:
            spec = model_spec(name)
            pred = fit_prepared(prepare(df, spec.feature_set, spec.targets), None, name,
                                params.get(name), seed)
            space = pred.space or load_space("compact")
            archs = space.sample_many(min(n_archs, 20_000), seed + 1)
            archs = (archs * (n_archs // len(archs) + 1))[:n_archs]
            pred.predict_archs(archs[:1000])
            best = min(_timed(pred.predict_archs, archs) for _ in range(3))
            small = min(_timed(pred.predict_archs, archs[:125]) for _ in range(20))
            out[name] = {"archs": n_archs, "archs_per_s": round(n_archs / best),
                         "batch_125_ms": round(1e3 * small, 3)}
            log.info("%s: %.0f archs/s, %.2f ms per 125", name, n_archs / best, 1e3 * small)
    return out


def _timed(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="latency CSV (default: generated rows)")
    parser.add_argument("--transfer-data", type=Path,
                        help="rows of a second device (default: generated, for generated --data)")
    parser.add_argument("--rows", type=int, default=600, help="generated rows (without --data)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--hat-mlp-steps", type=int, default=5000, help="HAT's recipe: 5000")
    parser.add_argument("--throughput-archs", type=int, default=100_000)
    parser.add_argument("--statistic", default="trimmed-mean", choices=LATENCY_STATISTICS,
                        help="latency label (the median and min are recomputed from the raw samples)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "predictor.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    generated = args.data is None
    df = synthetic_frame(args.rows, args.seed) if generated else read_dataset(args.data, args.statistic)
    models = [m.strip() for m in args.models.split(",")]
    params = {"hat-mlp": {"max_steps": args.hat_mlp_steps}}
    started = time.time()
    results: dict = {
        "data": {"source": "generated (predictor.synthetic)" if generated else str(args.data),
                 "statistic": args.statistic,
                 "rows": len(df), "device": str(df["device"].iloc[0]) if "device" in df else None,
                 "has_arch": ARCH_COLUMN in df.columns},
        "environment": {**library_versions(), "machine": platform.machine(),
                        "cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
        "settings": {"seed": args.seed, "hat_mlp_steps": args.hat_mlp_steps,
                     "default_model": DEFAULT_MODEL},
    }

    comparison = run_comparison(df, models, args.seed, params)
    results["compare"] = _records(comparison.table)
    log.info("compare:\n%s", comparison.table.to_string())

    hat_view = df[[c for c in HAT_COLUMNS if c in df.columns]]
    hat_table = run_comparison(hat_view, models, args.seed, params).table
    results["compare_hat_format"] = _records(hat_table)
    log.info("HAT-format compare:\n%s", hat_table.to_string())
    if "hat-mlp" in hat_table.index:
        d, h = hat_table.loc[DEFAULT_MODEL], hat_table.loc["hat-mlp"]
        results["default_vs_hat_mlp_on_hat_format"] = {
            "default": DEFAULT_MODEL, "rmse_ms": [d["rmse_ms"], h["rmse_ms"]],
            "mape": [d["mape"], h["mape"]],
            "no_worse": bool(d["rmse_ms"] <= h["rmse_ms"] and d["mape"] <= h["mape"])}

    curve = learning_curve(df, models, seed=args.seed, params=params)
    results["learning_curve"] = _records(curve.set_index("model"))
    results["cv_default"] = _records(cross_validate(df, DEFAULT_MODEL, k=5, seed=args.seed))
    plot_path = args.out.with_suffix(".png")
    plot_evaluation(comparison, curve, str(plot_path))
    results["plot"] = plot_path.name

    results["drift"] = None if generated else order_drift(df, seed=args.seed)
    log.info("drift: %s", results["drift"])

    new = (read_dataset(args.transfer_data, args.statistic) if args.transfer_data
           else synthetic_frame(300, args.seed + 1, "synthetic-pi") if generated else None)
    if new is not None:
        base = train_predictor(df, DEFAULT_MODEL, seed=args.seed)
        results["transfer"] = [evaluate_transfer(base, new, k=k, repeats=10, seed=args.seed)
                               for k in (10, 20)]
        log.info("transfer: %s", json.dumps(results["transfer"], indent=1))

    results["throughput_one_core"] = throughput(df, models, params, args.throughput_archs, args.seed)
    results["elapsed_s"] = round(time.time() - started, 1)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    log.info("results -> %s", args.out)
    return results


if __name__ == "__main__":
    main()
