"""Predictors for new hardware: adapted vs the k rows alone, suggested vs random rows, intervals.

    python benchmarks/bench_transfer.py hat [--hat-dir ../shared/hat] [--draws 10]
    python benchmarks/bench_transfer.py bundled [--base datasets/compact_local.csv]
                                                [--new datasets/compact_torchscript.csv]

`hat`: HAT's published latency files (read through `dataset import-hat`'s code), every
ordered pair of devices. The base is the default predictor trained on all rows of the
base device. Each draw splits the new device's rows as HAT does (seeded 80/10/10): k rows
are taken from the 80% (1,600 of 2,000), suggested (`predictor.suggest`, from features
only) or at random; the adapted predictor, the default model on the same k rows alone,
the "costs" and "macs" corrections alone (the kinds that use no base: what the base adds
beyond them), and the default model on all 80% are scored on the other 20% (400 rows). Reported per
pair and k: MAPE, share within +-10%, Kendall's tau, the candidates' mean stacking weights,
and the coverage of the adapted predictor's 90% intervals, also under other spreads
(`SPREADS`: the intervals' normalisation, `predictor.leverage`, with other penalties and
powers, and none) on the same left-out residuals, so the default's neighbourhood shows.
Writes `results/transfer_hat.json` and one figure, `results/transfer_hat.png` (predicted vs
measured, base / adapted / alone).

`bundled`: the README's transfer table on the bundled data (ONNX Runtime -> TorchScript on
the same CPU), both latency labels, via `predictor.transfer.evaluate_transfer`. Writes
`results/transfer_bundled.json`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from predictor import features, train_predictor  # noqa: E402
from predictor.conformal import COVERAGE_KEY, INTERVAL_CONFIDENCE, Conformal  # noqa: E402
from predictor.core import DEFAULT_MODEL, fit_prepared, library_versions, model_spec, prepare  # noqa: E402
from predictor.metrics import latency_metrics, split_indices  # noqa: E402
from predictor.suggest import suggest_rows  # noqa: E402
from predictor.leverage import ALPHA, SPREAD_POWER, Leverage  # noqa: E402
from predictor.transfer import BASELESS, FEATURE_SET, adapt, evaluate_transfer  # noqa: E402
from profiler.dataset import import_hat, read_dataset  # noqa: E402

log = logging.getLogger("bench_transfer")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HAT_DEVICES = {"raspberrypi": "wmt14enfr_cpu_raspberrypi_all.csv", "xeon": "wmt14enfr_cpu_xeon_all.csv",
               "titanxp": "wmt14enfr_gpu_titanxp_all.csv"}
KS = (5, 10, 20, 40)
INTERVAL_KS = (10, 20)
SHOWN = ("mape", "within_10", "kendall_tau")
#: The adaptation's kinds that use no base, each also scored on its own ("alone" is, as the rows alone).
ON_THEIR_OWN = tuple(kind for kind in BASELESS if kind != "alone")
#: The spreads the sweep tries, (leverage penalty, power of 1 + h): none (power 0), the square
#: root of 1 + h (a noise model; the default before), and 1 + h (bias), each at four penalties.
SPREADS = ((ALPHA, 0.0), *((alpha, power) for power in (0.5, 1.0) for alpha in (0.1, 0.3, 1.0, 3.0)))


def spread_name(alpha: float, power: float) -> str:
    return "none" if power == 0 else f"alpha={alpha:g},power={power:g}"


def spread_sweep(adapted, few: pd.DataFrame, held: pd.DataFrame, predicted: np.ndarray,
                 left_out_ms: np.ndarray) -> dict[str, float]:
    """Coverage of the adapted predictor's intervals on `held` under each of `SPREADS`: its
    left-out residuals renormalised, the held-out rows' spreads recomputed."""
    ctx, y_few = adapted.base.context, few["latency_ms"].to_numpy()
    X_few, X_held = features.from_frame(FEATURE_SET, few, ctx), features.from_frame(FEATURE_SET, held, ctx)
    residuals = np.asarray(adapted.intervals.scores) * Leverage.fit(X_few, y_few)[1]
    out = {}
    for alpha, power in SPREADS:
        leverage, spread = Leverage.fit(X_few, y_few, alpha, power)
        out[spread_name(alpha, power)] = Conformal(tuple(residuals / spread), "sweep", plus=True).coverage(
            held["latency_ms"].to_numpy(), predicted, INTERVAL_CONFIDENCE, left_out_ms,
            leverage.spread(X_held, predicted))
    return out


def load_hat(hat_dir: Path) -> dict[str, pd.DataFrame]:
    """HAT's files converted by `import_hat` (as `hatprof dataset import-hat` does), read back."""
    frames = {}
    with tempfile.TemporaryDirectory() as tmp:
        for device, name in HAT_DEVICES.items():
            out = Path(tmp) / f"{device}.csv"
            import_hat(hat_dir / name, out, device=device)
            frames[device] = read_dataset(out)
    return frames


def _mean_metrics(runs: list[dict]) -> dict:
    return {key: float(np.mean([r[key] for r in runs if r.get(key) is not None]))
            for key in (*SHOWN, COVERAGE_KEY) if any(r.get(key) is not None for r in runs)}


def hat_pair(base, new: pd.DataFrame, draws: int, ks: tuple[int, ...], keep_plot: bool) -> dict:
    """One ordered pair: every draw, every k, suggested and random rows."""
    spec = model_spec(DEFAULT_MODEL)
    prep = prepare(new, spec.feature_set, spec.targets)
    y = prep.ys["total"]
    base_predicted = base.predict_frame(new)["predicted_ms"].to_numpy()
    runs: dict = {"reference": [], "base": []}
    weights: dict = {}
    sweeps: dict = {}
    plot = None
    for draw in range(draws):
        pool, validation, test = split_indices(len(new), draw)
        held = np.concatenate([validation, test])
        reference = fit_prepared(prep, pool, DEFAULT_MODEL)
        runs["reference"].append(latency_metrics(y[held], reference.predict_parts(prep.X[held])["total"]))
        runs["base"].append(latency_metrics(y[held], base_predicted[held]))
        rng = np.random.default_rng(1000 + draw)
        for k in ks:
            picks = {"suggested": pool[suggest_rows(base, new.iloc[pool], k)],
                     "random": rng.choice(pool, k, replace=False)}
            for rows, few in picks.items():
                # The intervals' outer leave-one-out costs k adaptations: scored where the
                # acceptance reads them (k = 10, 20; at k = 5 a 90% interval is unbounded).
                adapted = adapt(base, new.iloc[few], intervals=k in INTERVAL_KS)
                predicted, inputs = adapted.predict_with_inputs(new.iloc[held])
                metrics = latency_metrics(y[held], predicted)
                intervals = adapted.intervals
                if intervals is not None and intervals.rows >= intervals.min_rows(INTERVAL_CONFIDENCE):
                    metrics[COVERAGE_KEY] = intervals.coverage(y[held], predicted, INTERVAL_CONFIDENCE, **inputs)
                    sweep = spread_sweep(adapted, new.iloc[few], new.iloc[held], predicted, inputs["left_out_ms"])
                    if not np.isclose(sweep[spread_name(ALPHA, SPREAD_POWER)], metrics[COVERAGE_KEY]):
                        raise RuntimeError("the sweep's residuals are not the adapted predictor's")
                    for name, cov in sweep.items():
                        sweeps.setdefault(f"{rows}/{k}", {}).setdefault(name, []).append(cov)
                alone_predicted = fit_prepared(prep, few, DEFAULT_MODEL).predict_parts(prep.X[held])["total"]
                # The kinds that use no base: how much of the gain the base itself brings.
                for kind in ON_THEIR_OWN:
                    own = adapt(base, new.iloc[few], kind, intervals=False).predict_frame(new.iloc[held])
                    runs.setdefault(f"{kind}/{rows}/{k}", []).append(
                        latency_metrics(y[held], own["predicted_ms"].to_numpy()))
                runs.setdefault(f"adapted/{rows}/{k}", []).append(metrics)
                runs.setdefault(f"alone/{rows}/{k}", []).append(latency_metrics(y[held], alone_predicted))
                shares = weights.setdefault(f"{rows}/{k}", {})
                for name, w in adapted.metadata["weights"].items():
                    shares[name] = shares.get(name, 0.0) + w / draws
                if keep_plot and draw == 0 and rows == "suggested" and k == 20:
                    plot = {"measured": y[held], "base": base_predicted[held], "adapted": predicted,
                            "alone": alone_predicted}
    out = {name: _mean_metrics(r) for name, r in runs.items()}
    out["mean_weights"] = weights
    out["coverage_by_spread"] = {key: {name: float(np.mean(v)) for name, v in c.items()} for key, c in sweeps.items()}
    return {"summary": out, "plot": plot}


def check_hat(pairs: dict, ks: tuple[int, ...]) -> dict:
    """The issue's acceptance, pair by pair."""
    checks: dict = {"within_10_k20_suggested_vs_1600_rows": {}, "adapted_mape_le_alone": {},
                    "coverage_90_k20": {}, "suggested_beat_random_k20": {}}
    for pair, s in pairs.items():
        adapted, ref = s["adapted/suggested/20"]["within_10"], s["reference"]["within_10"]
        checks["within_10_k20_suggested_vs_1600_rows"][pair] = {
            "adapted": adapted, "rows_1600": ref, "pass": bool(adapted >= ref - 0.03)}
        checks["adapted_mape_le_alone"][pair] = {
            f"{rows}/{k}": {"adapted": s[f"adapted/{rows}/{k}"]["mape"], "alone": s[f"alone/{rows}/{k}"]["mape"],
                            "pass": bool(s[f"adapted/{rows}/{k}"]["mape"] <= s[f"alone/{rows}/{k}"]["mape"])}
            for rows in ("suggested", "random") for k in ks}
        checks["coverage_90_k20"][pair] = {rows: s[f"adapted/{rows}/20"].get(COVERAGE_KEY)
                                           for rows in ("suggested", "random")}
        checks["suggested_beat_random_k20"][pair] = {
            "suggested_mape": s["adapted/suggested/20"]["mape"], "random_mape": s["adapted/random/20"]["mape"],
            "pass": bool(s["adapted/suggested/20"]["mape"] < s["adapted/random/20"]["mape"])}
    coverages = [v for c in checks["coverage_90_k20"].values() for v in c.values() if v is not None]
    checks["coverage_90_k20_mean"] = float(np.mean(coverages)) if coverages else None
    return checks


def pooled_sweep(pairs: dict) -> dict:
    """Each spread's coverage per k and row choice, and per k both choices pooled, over the pairs."""
    out: dict = {}
    for s in pairs.values():
        for key, by_name in s["coverage_by_spread"].items():
            k = key.split("/")[1]
            for name, cov in by_name.items():
                for where in (key, f"pooled/{k}"):
                    out.setdefault(name, {}).setdefault(where, []).append(cov)
    return {name: {where: float(np.mean(v)) for where, v in c.items()} for name, c in out.items()}


def plot_hat(plots: dict, path: Path) -> None:
    """Predicted vs measured on held-out rows, one panel per pair: base, adapted, alone (k = 20)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 8.5))
    for ax, (pair, p) in zip(axes.flat, plots.items()):
        y = p["measured"]
        for name, colour in (("base", "tab:gray"), ("alone", "tab:orange"), ("adapted", "tab:blue")):
            within = float(np.mean(np.abs(p[name] / y - 1) <= 0.1))
            ax.scatter(y, p[name], s=5, alpha=0.5, color=colour, label=f"{name} ({within:.0%} within ±10%)")
        lo, hi = float(y.min()) * 0.8, float(y.max()) * 1.25
        grid = np.array([lo, hi])
        ax.plot(grid, grid, "k-", lw=0.8)
        ax.fill_between(grid, grid * 0.9, grid * 1.1, color="k", alpha=0.08)
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), title=pair,
               xlabel="measured (ms)", ylabel="predicted (ms)")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("HAT's devices: base predictor of another device, adapted with k = 20 suggested rows, "
                 "and the default model on those 20 rows alone (400 held-out rows, draw 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_hat(args: argparse.Namespace) -> dict:
    frames = load_hat(args.hat_dir)
    bases = {device: train_predictor(df) for device, df in frames.items()}
    pairs, plots = {}, {}
    for a in frames:
        for b in frames:
            if a == b:
                continue
            started = time.time()
            result = hat_pair(bases[a], frames[b], args.draws, args.ks, keep_plot=True)
            pairs[f"{a} -> {b}"] = result["summary"]
            plots[f"{a} -> {b}"] = result["plot"]
            log.info("%s -> %s in %.0f s: %s", a, b, time.time() - started,
                     json.dumps({k: v for k, v in result["summary"].items() if "/20" in k or k == "reference"}))
    checks = check_hat(pairs, args.ks)
    sweep = pooled_sweep(pairs)
    default = spread_name(ALPHA, SPREAD_POWER)
    for name, c in sweep.items():
        log.info("coverage with spread %s%s: %s", name, " (the default)" * (name == default),
                 {where: round(v, 4) for where, v in sorted(c.items())})
    plot_path = args.out.with_suffix(".png")
    plot_hat(plots, plot_path)
    return {"data": {"hat_dir": str(args.hat_dir), "devices": list(frames),
                     "rows": {d: len(f) for d, f in frames.items()}},
            "settings": {"draws": args.draws, "ks": list(args.ks), "default_model": DEFAULT_MODEL,
                         "pool": "80% of HAT's seeded split (seed = draw)", "held_out": "the other 20%",
                         "confidence": INTERVAL_CONFIDENCE},
            "pairs": pairs, "checks": checks, "coverage_by_spread": sweep, "plot": plot_path.name}


def run_bundled(args: argparse.Namespace) -> dict:
    out: dict = {"data": {"base": str(args.base), "new": str(args.new)}, "settings": {"draws": args.draws},
                 "rows": []}
    for statistic in ("min", "trimmed-mean"):
        base = train_predictor(read_dataset(args.base, statistic))
        new = read_dataset(args.new, statistic)
        for k in args.ks:
            if k >= len(new) - 1:
                continue
            summary = evaluate_transfer(base, new, k=k, repeats=args.draws, seed=args.seed)
            out["rows"].append({"statistic": statistic, **summary})
            log.info("%s k=%d: adapted %s, alone %s", statistic, k,
                     {m: summary["adapted"][m] for m in SHOWN}, {m: summary["scratch"][m] for m in SHOWN})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", choices=("hat", "bundled"), help="HAT's devices, or the bundled ORT -> TorchScript")
    parser.add_argument("--hat-dir", type=Path, default=ROOT.parent / "shared" / "hat")
    parser.add_argument("--base", type=Path, default=ROOT / "datasets" / "compact_local.csv")
    parser.add_argument("--new", type=Path, default=ROOT / "datasets" / "compact_torchscript.csv")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--ks", type=lambda s: tuple(int(v) for v in s.split(",")), default=KS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.out = args.out or RESULTS / f"transfer_{args.data}.json"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("predictor").setLevel(logging.WARNING)
    started = time.time()
    results = run_hat(args) if args.data == "hat" else run_bundled(args)
    results["environment"] = library_versions()
    results["elapsed_s"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    log.info("results -> %s", args.out)
    return results


if __name__ == "__main__":
    main()
