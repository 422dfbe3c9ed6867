"""The `hatprof` command line end to end: real (tiny) measurements, files read back."""
from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time

import pandas as pd
import pytest

from hatprof.cli import main
from profiler.dataset import raw_path_for, read_dataset, recompute_from_raw
from profiler.errors import DatasetError
from profiler.space import load_space

TINY = ["--fixed", "--runs", "6", "--rounds", "2", "--warmup", "1", "--seq-len", "4", "--beam", "2"]


def run(args, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        sys.exit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_space_sample_prints_seeded_json_lines(capsys):
    code, out, _ = run(["space", "sample", "--space", "compact", "-n", "3", "--seed", "5"], capsys)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    expected = [a.to_dict() for a in load_space("compact").sample_many(3, 5)]
    assert lines == expected


def test_measure_writes_rows_whose_statistics_come_from_the_raw_samples(tmp_path, capsys):
    out = tmp_path / "local.csv"
    code, stdout, _ = run(["measure", "--device", "local", "--samples", "2", "--seed", "3",
                           "--out", str(out), *TINY], capsys)
    assert code == 0
    df = read_dataset(out)
    expected_ids = [a.arch_id for a in load_space("compact").sample_many(2, 3)]
    assert sorted(df["arch_id"]) == sorted(expected_ids)
    assert set(df["runs"]) == {6} and set(df["seq_len"]) == {4} and set(df["device"]) == {"local"}
    raw_lines = raw_path_for(out).read_text().splitlines()
    assert len(raw_lines) == 2
    for line in raw_lines:
        raw = json.loads(line)
        row = df[df["arch_id"] == raw["arch_id"]].iloc[0]
        assert len(raw["encoder_ms"]) == 6 and raw["round_sizes"] == [3, 3]
        stats = recompute_from_raw(raw, trim=0.1)
        assert stats["latency_mean_encoder"] == pytest.approx(row["latency_mean_encoder"], rel=1e-12)
        assert stats["latency_ms"] == pytest.approx(row["latency_ms"], rel=1e-12)
    assert all(a in stdout for a in expected_ids)
    for statistic, reduce in (("min", min), ("median", statistics.median)):
        restated = read_dataset(out, statistic).set_index("arch_id")
        for raw in map(json.loads, raw_lines):
            row = restated.loc[raw["arch_id"]]
            assert row["latency_mean_encoder"] == reduce(raw["encoder_ms"])
            assert row["latency_ms"] == reduce(raw["encoder_ms"]) + reduce(raw["decoder_ms"])
            assert row["latency_statistic"] == statistic
    raw_path_for(out).unlink()
    with pytest.raises(DatasetError, match="needs the raw samples"):
        read_dataset(out, "min")


def test_measure_converges_by_default_and_records_how(tmp_path, capsys):
    out = tmp_path / "conv.csv"
    code, stdout, stderr = run(["measure", "--device", "local", "--samples", "1", "--seed", "3", "--out", str(out),
                                "--runs", "20", "--rounds", "4", "--max-rounds", "6", "--warmup", "1",
                                "--seq-len", "4", "--beam", "2", "--precision", "0.5"], capsys)
    assert code == 0
    row = read_dataset(out).iloc[0]
    raw = json.loads(raw_path_for(out).read_text())
    rounds = raw["environment"]["rounds"]
    # every round timed is in the record with its verdict; the label is made of the accepted ones
    assert len(rounds) == row["rounds_used"] + row["rounds_discarded"] and 4 <= len(rounds) <= 6
    assert [r["verdict"] for r in rounds].count(None) == row["rounds_used"]
    # the label is made of the clean runs of the accepted rounds (of every round when none was
    # accepted, as on a busy machine: then the row is flagged)
    label_rounds = row["rounds_used"] or len(rounds)
    assert len(raw["round_sizes"]) == label_rounds and (row["rounds_used"] > 0 or row["unstable"])
    dropped = sum(len(r["dropped_ms"]["encoder"]) for r in rounds if r["verdict"] is None and row["rounds_used"])
    assert len(raw["encoder_ms"]) == 5 * label_rounds - dropped
    assert all(len(r["canary_ns"]["encoder"]) == 2 and "timed_out" in r["gate"] for r in rounds)
    stats = recompute_from_raw(raw, trim=0.1)
    assert stats["latency_ms"] == pytest.approx(row["latency_ms"], rel=1e-12)
    if stats["interval"] is None:  # a label of one round has no interval: an empty cell
        assert pd.isna(row["interval"]) and row["unstable"]
    else:
        assert stats["interval"] == pytest.approx(row["interval"], rel=1e-12)
    assert bool(row["unstable"]) == (not bool(row["converged"]))
    assert row["precision"] == 0.5 and row["device_s"] > 0
    assert ("+-" in stdout) == (stats["interval"] is not None) and "measuring on local" in stderr


def test_protocol_errors_name_the_option(tmp_path, capsys):
    code, _, stderr = run(["measure", "--samples", "1", "--out", str(tmp_path / "x.csv"), "--runs", "0"], capsys)
    assert code == 2 and "--runs" in stderr and "Traceback" not in stderr
    code, _, stderr = run(["measure", "--samples", "1", "--out", str(tmp_path / "x.csv"), "--max-temp", "0"], capsys)
    assert code == 2 and "--max-temp" in stderr
    code, _, stderr = run(["measure", "--samples", "1", "--out", str(tmp_path / "x.csv"), "--fixed",
                           "--precision", "0.02"], capsys)
    assert code == 2 and "--precision" in stderr and "--fixed" in stderr
    assert not (tmp_path / "x.csv").exists()


def test_measure_times_the_architectures_of_an_archs_file(tmp_path, capsys):
    archs = load_space("compact").sample_many(3, 11)
    listing = tmp_path / "archs.jsonl"
    listing.write_text("".join(json.dumps(a.to_dict()) + "\n\n" for a in archs[:2]))
    out = tmp_path / "local.csv"
    assert run(["measure", "--archs", str(listing), "--out", str(out), *TINY], capsys)[0] == 0
    assert sorted(read_dataset(out)["arch_id"]) == sorted(a.arch_id for a in archs[:2])


def test_measure_refuses_to_mix_settings_and_resumes(tmp_path, capsys):
    out = tmp_path / "local.csv"
    assert run(["measure", "--samples", "1", "--out", str(out), *TINY], capsys)[0] == 0
    before = out.read_bytes()
    code, _, err = run(["measure", "--samples", "2", "--out", str(out), "--resume",
                        *TINY[:-2], "--beam", "3"], capsys)
    assert code == 1 and "beam" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before
    code, _, err = run(["measure", "--samples", "2", "--out", str(out), "--resume", *TINY], capsys)
    assert code == 0 and "1 of 2 already" in err
    assert len(read_dataset(out)) == 2


@pytest.mark.parametrize("args, status, message", [
    (["measure", "--space", "nope", "--out", "x.csv"], 2, "unknown space 'nope'"),
    (["measure", "--trim", "0.6", "--out", "x.csv"], 2, "trim must be in [0, 0.5)"),
    (["measure", "--device", "rpi9", "--out", "x.csv"], 1, "unknown device 'rpi9'"),
    (["measure", "--out", "not-a-dir/file.txt/x.csv", "--samples", "1"], 1, "x.csv"),
    (["dataset", "info", "missing.csv"], 1, "missing.csv"),
    (["measure", "--archs", "bad.jsonl", "--out", "x.csv"], 1, "bad.jsonl:2: encoder_embed_dim=999"),
    (["measure", "--archs", "empty.jsonl", "--out", "x.csv"], 1, "empty.jsonl holds no architectures"),
    (["export", "--arch", "bad.json", "--out", "exp"], 1, "encoder_embed_dim=999"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, monkeypatch, capsys, args, status, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HATPROF_DEVICES", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    (tmp_path / "not-a-dir").mkdir()
    (tmp_path / "not-a-dir" / "file.txt").write_text("x")
    arch = load_space("compact").largest().to_dict()
    (tmp_path / "bad.json").write_text(json.dumps({**arch, "encoder_embed_dim": 999}))
    (tmp_path / "bad.jsonl").write_text(json.dumps(arch) + "\n" + (tmp_path / "bad.json").read_text())
    (tmp_path / "empty.jsonl").write_text("\n")
    code, _, err = run(args, capsys)
    assert code == status
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "exp").exists()


def test_killed_measure_resumes_without_loss_or_duplicates(tmp_path):
    out = tmp_path / "killed.csv"
    cmd = [sys.executable, "-m", "hatprof", "measure", "--samples", "6", "--seed", "11",
           "--interleave", "1", "--out", str(out), *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_text().splitlines()) >= 3:  # header + 2 rows
                break
            time.sleep(0.05)
        else:
            pytest.fail("measure wrote no rows in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = read_dataset(out)
    assert 2 <= len(partial) < 6
    subprocess.run([*cmd, "--resume"], check=True, capture_output=True)
    df = read_dataset(out)
    expected = {a.arch_id for a in load_space("compact").sample_many(6, 11)}
    assert len(df) == 6 and set(df["arch_id"]) == expected
    assert list(df["arch_id"][:len(partial)]) == list(partial["arch_id"])
    raw_ids = [json.loads(line)["arch_id"] for line in raw_path_for(out).read_text().splitlines()]
    assert sorted(raw_ids) == sorted(expected)
