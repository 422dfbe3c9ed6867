"""`hatprof predictor ...` through click's test runner: outputs, files, errors."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from profiler.dataset import HAT_COLUMNS
from profiler.errors import HatprofError, PredictorError, SpaceError
from profiler.space import load_space
from hatprof.commands.predictor import predictor
from predictor.persistence import load_predictor
from predictor.synthetic import synthetic_frame
from predictor.transfer import METHODS

EVAL_KEYS = {"n", "rmse_ms", "mape", "rmspe", "within_5", "within_10", "kendall_tau", "spearman_rho"}


def invoke(*args: str):
    """Run the group; a HatprofError propagates, as the main CLI expects."""
    result = CliRunner().invoke(predictor, [str(a) for a in args], catch_exceptions=True)
    if isinstance(result.exception, HatprofError):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    paths = {"desk": root / "desk.csv", "pi": root / "pi.csv", "pi_few": root / "pi_few.csv",
             "hat": root / "hat.csv", "model": root / "desk.predictor", "root": root}
    synthetic_frame(120, seed=0).to_csv(paths["desk"], index=False)
    pi = synthetic_frame(80, seed=1, device="synthetic-pi")
    pi.to_csv(paths["pi"], index=False)
    pi.head(15).to_csv(paths["pi_few"], index=False)
    synthetic_frame(60, seed=2, hat_only=True).to_csv(paths["hat"], index=False)
    result = invoke("train", "--data", paths["desk"], "--out", paths["model"])
    assert result.exit_code == 0, result.output
    assert "held-out: n=12" in result.output
    return paths


def test_eval_writes_json_with_the_metrics(files):
    out = files["root"] / "eval.json"
    result = invoke("eval", "--predictor", files["model"], "--data", files["desk"], "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert EVAL_KEYS <= set(report) and report["n"] == 120
    assert report["within_10"] > 0.9 and report["device"] == "synthetic-desktop"


def test_predict_an_arch_file_and_a_csv(files):
    archs = load_space("compact").sample_many(3, seed=4)
    arch_file = files["root"] / "archs.json"
    arch_file.write_text(json.dumps([a.to_dict() for a in archs]))
    result = invoke("predict", "--predictor", files["model"], "--arch", arch_file)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "arch_id,predicted_ms" and len(lines) == 4
    assert lines[1].startswith(archs[0].arch_id)
    out = files["root"] / "pred.csv"
    result = invoke("predict", "--predictor", files["model"], "--data", files["pi"], "--out", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["arch_id", "predicted_ms", "predicted_encoder_ms", "predicted_decoder_ms"]


def test_predict_needs_exactly_one_input(files):
    result = invoke("predict", "--predictor", files["model"])
    assert result.exit_code == 2 and "exactly one of --arch and --data" in result.output
    bad = files["root"] / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HatprofError, match="bad.json:1: architecture is not valid JSON"):
        invoke("predict", "--predictor", files["model"], "--arch", bad)


def test_arch_outside_the_space_is_a_domain_error(files):
    arch_file = files["root"] / "wide.json"
    arch_file.write_text(json.dumps(load_space("wmt14.en-de").sample_many(1, seed=0)[0].to_dict()))
    with pytest.raises(SpaceError, match="at most 4 and 4"):
        invoke("predict", "--predictor", files["model"], "--arch", arch_file)


def test_compare_prints_a_table_and_draws_a_plot(files):
    plot = files["root"] / "compare.png"
    result = invoke("compare", "--data", files["hat"], "--models", "ridge,gbt", "--plot", plot)
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert {"features", "mape", "within_10", "kendall_tau"} <= set(header)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    progress = [line.split(",")[0] for line in result.stderr.splitlines()]
    assert progress == ["comparing: fitting ridge (1/2)", "comparing: fitting gbt (2/2)",
                        "learning curve: fitting ridge (1/2)", "learning curve: fitting gbt (2/2)"]
    result = invoke("compare", "--data", files["hat"], "--models", "ridge,xgb")
    assert result.exit_code == 2 and "unknown model(s) xgb" in result.output


def test_adapt_then_eval(files):
    out = files["root"] / "pi.predictor"
    result = invoke("adapt", "--base", files["model"], "--data", files["pi_few"], "--out", out)
    assert result.exit_code == 0, result.output
    assert "auto correction from 15 rows (" in result.output
    # The stacking weights, by candidate, before the leave-one-out RMSPE; they sum to 1.
    weights = result.output.split(" rows (", 1)[1].split(";", 1)[0].split(", ")
    assert {w.rsplit(" ", 1)[0] for w in weights} <= set(METHODS)
    assert sum(float(w.rsplit(" ", 1)[1]) for w in weights) == pytest.approx(1.0, abs=0.01 * len(weights))
    assert "held-out error by leave-one-out of the adaptation: n=15" in result.output
    saved = load_predictor(out).metadata["choice"]  # what it kept, and why, as the file records it
    kept = "the stack" if saved["chosen"] == "stack" else "macs alone"
    assert (f"kept {kept}: leave-one-out MAPE {saved['macs']:.2f}% for macs alone, {saved['stack']:.2f}% "
            f"for the stack left out whole (paired t {saved['t']:.2f};") in result.output
    result = invoke("eval", "--predictor", out, "--data", files["pi"])
    assert result.exit_code == 0 and "n=80" in result.output
    assert "90% intervals (jackknife+ (leave-one-out of the adaptation, normalised by leverage), 15 scored rows) cover" in result.output


def test_predict_gives_intervals_and_their_coverage(files):
    result = invoke("predict", "--predictor", files["model"], "--data", files["pi"], "--confidence", "0.8")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    q = (table["upper_ms"] / table["predicted_ms"] - 1).round(3).unique()  # CSV keeps 4 decimals
    assert len(q) == 1 and q[0] > 0  # one relative half-width for every row
    assert (table["lower_ms"] / table["predicted_ms"] - 1).round(3).unique().tolist() == [-q[0]]
    # the desktop predictor on the Pi's rows: far off, so its intervals cover few of them
    assert "80% intervals cover" in result.stderr


def test_predict_archs_with_an_adapted_predictors_jackknife_intervals(files):
    from predictor.conformal import intervals_of

    adapted = files["root"] / "pi_for_archs.predictor"
    assert invoke("adapt", "--base", files["model"], "--data", files["pi_few"], "--out", adapted).exit_code == 0
    archs = load_space("compact").sample_many(4, seed=9)
    arch_file = files["root"] / "archs_for_bounds.jsonl"
    arch_file.write_text("".join(a.canonical_json() + "\n" for a in archs))
    result = invoke("predict", "--predictor", adapted, "--arch", arch_file, "--confidence", "0.8")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    # the library's two-step path: predictions, then the jackknife+ inputs computed on their own
    pred = load_predictor(adapted)
    predicted = pred.predict_archs(archs)
    lower, upper = intervals_of(pred).bounds(predicted, 0.8, **pred.interval_inputs(archs=archs))
    np.testing.assert_allclose(table["predicted_ms"], predicted, rtol=1e-4)
    np.testing.assert_allclose(table["lower_ms"], lower, rtol=1e-4)
    np.testing.assert_allclose(table["upper_ms"], upper, rtol=1e-4)
    assert len(set(np.round(upper / predicted, 4))) > 1  # leverage widens some architectures more


def test_suggest_writes_distinct_archs_of_the_space(files):
    out = files["root"] / "suggested.jsonl"
    result = invoke("suggest", "--base", files["model"], "--space", "compact", "-k", "7",
                    "--candidates", "200", "--out", out)
    assert result.exit_code == 0, result.output
    from profiler.space import ArchConfig

    archs = [ArchConfig.from_json(line).validate(load_space("compact")) for line in out.read_text().splitlines()]
    assert len({a.arch_id for a in archs}) == 7


def test_adapt_measures_suggested_archs_on_a_device(files):
    """The whole loop on this machine with a tiny protocol: suggest, measure, adapt, report."""
    short = files["root"] / "short.csv"
    synthetic_frame(60, seed=3, seq_len=4, beam=1).to_csv(short, index=False)
    base = files["root"] / "short.predictor"
    assert invoke("train", "--data", short, "--out", base).exit_code == 0
    out = files["root"] / "local.predictor"
    # The rows are timed on the base's workload (4 tokens, beam 1), whatever --seq-len says.
    result = invoke("adapt", "--base", base, "--device", "local", "-k", "3", "--runs", "6",
                    "--rounds", "1", "--warmup", "1", "--fixed", "--out", out)
    assert result.exit_code == 0, result.output
    measured = pd.read_csv(out.with_suffix(".csv"))
    assert len(measured) == 3 and (measured["latency_ms"] > 0).all()
    assert set(measured["seq_len"]) == {4} and set(measured["beam"]) == {1}
    assert "from 3 rows" in result.output
    assert "held-out error by leave-one-out of the adaptation: n=3" in result.output


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    (",".join(HAT_COLUMNS) + "\n", "data has no rows"),
    ("latency_ms,arch\n1.0,{}\n", "missing column"),
])
def test_bad_csvs_are_domain_errors(files, content, message):
    path = files["root"] / "bad.csv"
    path.write_text(content)
    with pytest.raises(HatprofError, match=message):
        invoke("train", "--data", path, "--out", files["root"] / "x.predictor")


def test_nan_latency_and_foreign_predictor_files(files):
    df = pd.read_csv(files["desk"])
    df.loc[3, "latency_ms"] = float("nan")
    nan_csv = files["root"] / "nan.csv"
    df.to_csv(nan_csv, index=False)
    with pytest.raises(PredictorError, match=r"latency_ms is missing.*first: row 3"):
        invoke("eval", "--predictor", files["model"], "--data", nan_csv)
    with pytest.raises(PredictorError, match="looks like a CSV"):
        invoke("eval", "--predictor", files["desk"], "--data", files["desk"])


def test_predict_reads_the_json_lines_that_space_sample_writes(files):
    archs = load_space("compact").sample_many(3, seed=4)
    lines = files["root"] / "sampled.jsonl"
    lines.write_text("".join(a.canonical_json() + "\n" for a in archs))
    result = invoke("predict", "--predictor", files["model"], "--arch", lines)
    assert result.exit_code == 0, result.output
    assert [row.split(",")[0] for row in result.output.splitlines()[1:]] == [a.arch_id for a in archs]


def test_adapt_flags_a_predictor_whose_own_leave_one_out_error_is_large(files):

    good = files["root"] / "good.predictor"
    result = invoke("adapt", "--base", files["model"], "--data", files["pi_few"], "--out", good)
    assert result.exit_code == 0 and "poorly adapted" not in result.output and not result.output.startswith("!")
    assert load_predictor(good).metadata["poorly_adapted"] is False
    assert load_predictor(good).space == load_predictor(files["model"]).space == load_space("compact")  # spaces travel
    noisy = pd.read_csv(files["pi_few"])
    factor = np.random.default_rng(5).uniform(0.3, 3.0, len(noisy))  # rows no predictor can follow
    for column in [c for c in noisy.columns if c.startswith("latency")]:
        noisy[column] = noisy[column] * factor
    noisy.to_csv(files["root"] / "noisy.csv", index=False)
    bad = files["root"] / "bad.predictor"
    result = invoke("adapt", "--base", files["model"], "--data", files["root"] / "noisy.csv", "--out", bad)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("! ") and "! poorly adapted: its own leave-one-out RMSPE is" in result.stderr
    assert load_predictor(bad).metadata["poorly_adapted"] is True
