from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

from _archs import TINY_SEARCH_SPACE

from hatprof.commands.search import search, supernet
from profiler.cost import count_macs
from profiler.errors import SearchError

SPACE = TINY_SEARCH_SPACE


class MacPredictor:
    def predict_archs(self, archs):
        return np.array([count_macs(a, SPACE)["total"] / 1e6 for a in archs])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    space_file = folder / "clitiny.json"
    space_file.write_text(json.dumps(SPACE.to_dict()))
    out = folder / "ck.pt"
    result = CliRunner().invoke(supernet, ["train", "--space", str(space_file), "--steps", "4", "--train-size",
                                           "300", "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "validating the largest and smallest SubTransformers on" in result.stderr  # announced, not silent
    return out


@pytest.fixture
def fake_predictor(monkeypatch, tmp_path):
    module = types.ModuleType("predictor.persistence")
    module.load_predictor = lambda path: MacPredictor()
    monkeypatch.setitem(sys.modules, "predictor.persistence", module)
    path = tmp_path / "pred.json"
    path.write_text("{}")
    return path


def test_supernet_train_writes_checkpoint_and_record(checkpoint) -> None:
    record = json.loads(checkpoint.with_suffix(".json").read_text())
    assert record["train"]["steps"] == 4 and record["space"] == "tiny"
    assert record["training"]["valid_loss_largest"] > 0 and record["checkpoint_bytes"] > 0


def test_search_sweep_writes_result_and_plot(checkpoint, fake_predictor, tmp_path) -> None:
    out, plot = tmp_path / "result.json", tmp_path / "front.png"
    largest_ms = MacPredictor().predict_archs([SPACE.largest()])[0]
    limits = [largest_ms * 0.5, largest_ms * 0.8]
    args = ["--predictor", str(fake_predictor), "--supernet", str(checkpoint), "--latency-limits",
            ",".join(f"{x:.6f}" for x in limits), "--iterations", "2", "--population", "10",
            "--score-sentences", "16", "--bleu-sentences", "8", "--out", str(out), "--plot", str(plot),
            "--strategy", "random"]
    result = CliRunner().invoke(search, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["reference"]["name"] == "largest" and payload["settings"]["strategy"] == "random"
    assert payload["threads"] == 1  # one torch thread unless --threads says otherwise
    progress = [line for line in result.stderr.splitlines() if line.startswith("search <= ")]
    assert len(progress) == 4 and "iteration 2/2" in progress[1] and "feasible" in progress[1]
    assert "ETA" in progress[-1]
    assert [round(r["latency_limit_ms"], 3) for r in payload["runs"]] == [round(x, 3) for x in limits]
    for run in payload["runs"]:
        assert run["winner"]["predicted_latency_ms"] <= run["latency_limit_ms"]
        assert len(run["search"]["iterations"]) == 2 and run["search"]["strategy"] == "random"
    assert plot.stat().st_size > 1000 and "largest" in result.output


def test_search_usage_and_domain_errors(checkpoint, fake_predictor, tmp_path) -> None:
    base = ["--predictor", str(fake_predictor), "--supernet", str(checkpoint), "--out", str(tmp_path / "r.json")]
    result = CliRunner().invoke(search, base)
    assert result.exit_code == 2 and "exactly one of" in result.output
    result = CliRunner().invoke(search, base + ["--latency-limits", "1,x"])
    assert result.exit_code == 2
    result = CliRunner().invoke(search, base + ["--latency-limit-ms", "0.001", "--iterations", "1"])
    assert isinstance(result.exception, SearchError)


@pytest.mark.parametrize("statistic", ["trimmed-mean", "min"])
def test_search_measures_the_winner_with_its_inherited_weights(checkpoint, fake_predictor, tmp_path,
                                                               monkeypatch, statistic) -> None:
    from nas.supernet import extract_subtransformer
    from nas.train import load_checkpoint
    from profiler.artifacts import cache_root
    from profiler.dataset import raw_path_for, read_dataset
    from profiler.export import weights_digest
    from profiler.space import ArchConfig

    monkeypatch.setattr(MacPredictor, "metadata", {"data": {"latency_statistic": statistic}}, raising=False)
    out = tmp_path / "result.json"
    limit = MacPredictor().predict_archs([SPACE.largest()])[0] * 0.6
    args = ["--predictor", str(fake_predictor), "--supernet", str(checkpoint), "--latency-limit-ms",
            f"{limit:.6f}", "--iterations", "1", "--population", "10", "--score-sentences", "8",
            "--bleu-sentences", "4", "--out", str(out), "--measure-device", "local", "--measure-runs", "6"]
    result = CliRunner().invoke(search, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["latency_statistic"] == statistic
    rows = read_dataset(out.with_suffix(".measured.csv"), statistic).set_index("arch_id")
    lines = {line.split()[-1]: line for line in result.stdout.splitlines() if line.strip()}
    for report in (payload["reference"], payload["runs"][0]["winner"]):
        assert report["measured_latency_ms"] == pytest.approx(rows.loc[report["arch_id"], "latency_ms"])
        assert report["measured_trusted"] == (not rows.loc[report["arch_id"], "unstable"])
        table_line = lines["largest" if report["name"] == "largest" else report["arch_id"]]
        assert ("?" in table_line) == (not report["measured_trusted"])  # an unconverged latency is marked
    assert set(rows["runs"]) == {6} and len(raw_path_for(out.with_suffix(".measured.csv")).read_text().splitlines()) == 2
    net, _ = load_checkpoint(checkpoint)
    winner = ArchConfig.from_dict(payload["runs"][0]["winner"]["arch"])
    exported = {json.loads(m.read_text())["weights_sha256"] for m in cache_root().glob("*/manifest.json")
                if json.loads(m.read_text())["arch_id"] == winner.arch_id}
    assert weights_digest(extract_subtransformer(net, winner)) in exported


def test_the_table_marks_a_winner_measured_over_its_limit(capsys) -> None:
    from hatprof.commands.search import echo_table

    def row(name, measured, over=None):
        extra = {} if over is None else {"over_limit": over}
        return {"name": name, "arch_id": f"id-{name}", "predicted_latency_ms": 9.5, "valid_loss": 1.0,
                "test_bleu": 50.0, "measured_latency_ms": measured, "measured_trusted": True, **extra}

    echo_table(row("largest", 30.0), [{"latency_limit_ms": 10, "winner": row("a", 16.4, True)},
                                      {"latency_limit_ms": 20, "winner": row("b", 12.0, False)}])
    out, err = capsys.readouterr()
    lines = {line.split()[-1]: line for line in out.splitlines()}
    assert "16.40!" in lines["id-a"] and "!" not in lines["id-b"] and "!" not in lines["largest"]
    assert "measured over its latency limit" in err
