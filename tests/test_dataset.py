from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from profiler.dataset import (COLUMNS, HAT_COLUMNS, SETTINGS, DatasetWriter, dataset_info, import_hat,
                              make_settings, raw_path_for, read_dataset, recompute_from_raw,
                              row_from_measurement)
from profiler.errors import DatasetError, SpaceError
from profiler.protocol import Measurement, TimingProtocol
from profiler.space import HAT_FEATURES, ArchConfig, load_space

REPO = Path(__file__).resolve().parents[1]
SPACE = load_space("compact")
PROTOCOL = TimingProtocol.hat(warmup=1, runs=30, trim=0.1)
SETTINGS_A = make_settings(SPACE, PROTOCOL, device="local", host="box", cpu_model="AMD EPYC", runtime="onnxruntime",
                           runtime_version="1.32.0", fmt="onnx")
ENV = {"affinity": "1", "hostname": "box"}

HAT_HEADER = ",".join(HAT_COLUMNS)
HAT_ROWS = [  # HAT's published format: 10 features, then the 4 latencies (ms)
    "512,6,1877.3333333333333,6.0,640,3,1706.6666666666667,6.0,2.6666666666666665,1.3333333333333333,"
    "1990.0972843170166,5932.554125785828,413.8751029968262,45.89879512786865",
    "640,6,2048.0,4.333333333333333,640,2,1024.0,5.0,2.0,1.5,"
    "221.16339206695557,4907.817363739014,0.26357173919677734,42.884111404418945",
    "512,6,1536.0,4.0,512,1,3072.0,4.0,2.0,1.0,2321.3201761245728,3677.206516265869,21.9088792800903,130.197525024414",
]


def fake_measurement(seed: int, base_ns: int = 5_000_000, drift: float = 0.0) -> Measurement:
    rng = np.random.default_rng(seed)
    rounds = []
    for r, size in enumerate(PROTOCOL.runs_per_round()):
        level = base_ns * (1 + drift * r)
        rounds.append([int(v) for v in rng.normal(level, level * 0.02, size).clip(1)])
    return Measurement(samples_ns=tuple(s for r in rounds for s in r),
                       round_sizes=tuple(len(r) for r in rounds),
                       other_cpu=(0.0, None, 0.01), trim=PROTOCOL.trim)


def make_row(arch: ArchConfig, seed: int, settings=SETTINGS_A, drift: float = 0.0):
    return row_from_measurement(arch, SPACE, settings, fake_measurement(seed, drift=drift),
                                fake_measurement(seed + 1000, base_ns=20_000_000), ENV)


def write_rows(path: Path, archs, settings=SETTINGS_A, resume=False, start_seed=0):
    rows = []
    with DatasetWriter(path, settings, resume=resume) as writer:
        for i, arch in enumerate(archs):
            row, raw = make_row(arch, start_seed + i, settings)
            writer.write(row, raw)
            rows.append(row)
    return rows


def raw_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in raw_path_for(path).read_text().splitlines()]


def snapshot_files(path: Path) -> tuple[bytes, bytes]:
    return path.read_bytes(), raw_path_for(path).read_bytes()


@pytest.fixture
def archs():
    return SPACE.sample_many(6, seed=7)


# -- writing and reading back ---------------------------------------------------------------------

def test_written_rows_read_back_equal(tmp_path, archs):
    path = tmp_path / "lat.csv"
    rows = write_rows(path, archs[:3])
    assert path.read_text().splitlines()[0].split(",") == list(COLUMNS)
    df = read_dataset(path)
    assert list(df.columns) == list(COLUMNS) and len(df) == 3
    for (_, got), row, arch in zip(df.iterrows(), rows, archs):
        assert [got[c] for c in HAT_FEATURES] == arch.hat_features()
        assert ArchConfig.from_json(got["arch"]) == arch and got["arch_id"] == arch.arch_id
        for column in COLUMNS:
            if column in ("unstable", "other_cpu", "converged", "reference_ms") or column in SETTINGS:
                continue
            expected = row[column]
            assert got[column] == expected, column  # floats round-trip exactly
        assert got["latency_ms"] == row["latency_mean_encoder"] + row["latency_mean_decoder"]
        assert got["unstable"] == row["unstable"] and got["other_cpu"] == row["other_cpu"]
        assert row["converged"] is None and got["converged"] != got["converged"]  # fixed protocol: empty (NaN)
        assert {s: str(got[s]) for s in SETTINGS} == SETTINGS_A
    assert df["cpus"].tolist() == ["1"] * 3  # a CPU list stays text


def test_row_values_come_from_the_measurements(archs):
    enc, dec = fake_measurement(1), fake_measurement(2, base_ns=20_000_000)
    row, raw = row_from_measurement(archs[0], SPACE, SETTINGS_A, enc, dec, ENV)
    mid = sorted(enc.samples_ns)[3:27]  # floor(0.1 x 30) = 3 from each end
    assert row["latency_mean_encoder"] == statistics.mean(mid) / 1e6
    assert row["latency_std_encoder"] == pytest.approx(statistics.pstdev(mid) / 1e6, rel=1e-12)
    assert row["latency_median_ms"] == pytest.approx(
        (statistics.median(enc.samples_ns) + statistics.median(dec.samples_ns)) / 1e6, rel=1e-14)
    assert row["latency_min_ms"] == (min(enc.samples_ns) + min(dec.samples_ns)) / 1e6
    assert row["other_cpu"] == 0.01 and row["cpus"] == "1" and row["vocab"] == str(SPACE.tgt_vocab)
    assert row["measured_at"].endswith("+00:00")
    assert raw["round_sizes"] == [10, 10, 10] and raw["environment"] == ENV
    assert raw["encoder_ms"] == [s / 1e6 for s in enc.samples_ns]


def test_every_csv_statistic_is_recomputable_from_the_sidecar(tmp_path, archs):
    path = tmp_path / "lat.csv"
    write_rows(path, archs[:4])
    df = read_dataset(path)
    lines = raw_path_for(path).read_text().splitlines()
    assert [json.loads(line)["arch_id"] for line in lines] == df["arch_id"].tolist()
    for line, (_, got) in zip(lines, df.iterrows()):
        stats = recompute_from_raw(line, trim=float(got["trim"]))
        for column, value in stats.items():
            if value is None:
                assert math.isnan(got[column]), column
            else:
                assert got[column] == value, column
        # and independently of hatprof's code: HAT's trimmed mean of the raw encoder samples
        raw = json.loads(line)
        k = math.floor(0.1 * len(raw["encoder_ms"]))
        enc_mid = sorted(raw["encoder_ms"])[k:len(raw["encoder_ms"]) - k]
        assert got["latency_mean_encoder"] == pytest.approx(statistics.mean(enc_mid), rel=1e-12)
        assert got["latency_std_encoder"] == pytest.approx(statistics.pstdev(enc_mid), rel=1e-9)


def test_drift_between_rounds_marks_the_row_unstable(archs):
    stable, _ = make_row(archs[0], 1)
    drifting, _ = make_row(archs[0], 1, drift=0.2)
    assert not stable["unstable"]
    assert drifting["unstable"] and drifting["round_spread"] > 0.05


def test_row_from_measurement_checks_consistency(archs):
    enc, dec = fake_measurement(1), fake_measurement(2)
    with pytest.raises(DatasetError, match="runs"):
        row_from_measurement(archs[0], SPACE, {**SETTINGS_A, "runs": 300}, enc, dec, ENV)
    with pytest.raises(DatasetError, match="space"):
        row_from_measurement(archs[0], SPACE, {**SETTINGS_A, "space": "wmt14.en-de"}, enc, dec, ENV)
    outside = load_space("wmt14.en-de").sample_many(1, seed=0)[0]
    with pytest.raises(SpaceError):
        row_from_measurement(outside, SPACE, SETTINGS_A, enc, dec, ENV)
    with pytest.raises(DatasetError, match="missing"):
        row_from_measurement(archs[0], SPACE, {k: v for k, v in SETTINGS_A.items() if k != "host"}, enc, dec, ENV)


# -- resume and refusing to mix -------------------------------------------------------------------

def test_existing_file_needs_resume(tmp_path, archs):
    path = tmp_path / "lat.csv"
    write_rows(path, archs[:1])
    before = snapshot_files(path)
    with pytest.raises(DatasetError, match="--resume"):
        DatasetWriter(path, SETTINGS_A, resume=False)
    assert snapshot_files(path) == before


def test_resume_skips_done_architectures(tmp_path, archs):
    path = tmp_path / "lat.csv"
    write_rows(path, archs[:2])
    with DatasetWriter(path, SETTINGS_A, resume=True) as writer:
        assert writer.done_ids == {a.arch_id for a in archs[:2]}
        todo = [a for a in archs[:4] if a.arch_id not in writer.done_ids]
        assert todo == archs[2:4]
        for i, arch in enumerate(todo):
            writer.write(*make_row(arch, 10 + i))
        with pytest.raises(DatasetError, match="already has a row"):
            writer.write(*make_row(archs[0], 99))
    df = read_dataset(path)
    assert df["arch_id"].tolist() == [a.arch_id for a in archs[:4]]
    assert sum(line.startswith("encoder_embed_dim,") for line in path.read_text().splitlines()) == 1
    assert [r["arch_id"] for r in raw_lines(path)] == df["arch_id"].tolist()


def test_resume_of_a_missing_file_starts_it(tmp_path, archs):
    path = tmp_path / "new.csv"
    write_rows(path, archs[:1], resume=True)
    assert len(read_dataset(path)) == 1


@pytest.mark.parametrize("name, value", [
    ("device", "rpi4"), ("trim", 0.2), ("runs", 60), ("format", "torchscript"), ("cpu_model", "Intel Xeon"),
    ("runtime_version", "1.16.0"), ("space_digest", "0123456789abcdef"), ("precision", 0.02),
])
def test_mixing_settings_is_refused_and_the_file_untouched(tmp_path, archs, name, value):
    path = tmp_path / "lat.csv"
    write_rows(path, archs[:2])
    with open(path, "ab") as f:  # even a torn tail must survive a refused resume
        f.write(b"320,3,51")
    before = snapshot_files(path)
    other = {**SETTINGS_A, name: value}
    with pytest.raises(DatasetError) as info:
        DatasetWriter(path, other, resume=True)
    message = str(info.value)
    assert name in message and SETTINGS_A[name] in message and str(value) in message
    assert "\n" not in message
    assert snapshot_files(path) == before


def test_writing_a_row_with_other_settings_is_refused(tmp_path, archs):
    path = tmp_path / "lat.csv"
    other = {**SETTINGS_A, "host": "elsewhere"}
    with DatasetWriter(path, SETTINGS_A) as writer:
        with pytest.raises(DatasetError, match="host"):
            writer.write(*make_row(archs[0], 1, settings=other))
    assert not path.exists()  # no row: the new file is not left as a header alone


def test_resume_refuses_an_imported_file(tmp_path):
    src = tmp_path / "rpi.csv"
    src.write_text(HAT_HEADER + "\n" + "\n".join(HAT_ROWS) + "\n")
    out = tmp_path / "imported.csv"
    import_hat(src, out)
    with pytest.raises(DatasetError, match="space"):
        DatasetWriter(out, SETTINGS_A, resume=True)


def test_a_second_writer_is_refused(tmp_path, archs):
    path = tmp_path / "lat.csv"
    with DatasetWriter(path, SETTINGS_A) as writer:
        writer.write(*make_row(archs[0], 1))
        with pytest.raises(DatasetError, match="another process"):
            DatasetWriter(path, SETTINGS_A, resume=True)


# -- crash safety ---------------------------------------------------------------------------------

def test_torn_last_line_is_repaired_on_resume(tmp_path, archs):
    path = tmp_path / "lat.csv"
    write_rows(path, archs[:2])
    orphan_row, orphan_raw = make_row(archs[2], 5)
    with open(raw_path_for(path), "a") as f:  # killed after the raw line, before the CSV row
        f.write(json.dumps(orphan_raw) + "\n")
        f.write('{"arch_id": "to')            # and a torn raw line
    with open(path, "a") as f:
        f.write("256.0,4,448.0,3.0,19")       # a torn CSV line
    with pytest.raises(DatasetError):
        read_dataset(path)
    with DatasetWriter(path, SETTINGS_A, resume=True) as writer:
        assert writer.done_ids == {a.arch_id for a in archs[:2]}
        assert path.read_bytes().endswith(b"\n")
        writer.write(orphan_row, orphan_raw)
    df = read_dataset(path)
    assert df["arch_id"].tolist() == [a.arch_id for a in archs[:3]]
    assert [r["arch_id"] for r in raw_lines(path)] == df["arch_id"].tolist()


def test_torn_header_is_rewritten(tmp_path, archs):
    path = tmp_path / "lat.csv"
    path.write_text("encoder_embed_dim,encoder_lay")
    write_rows(path, archs[:1], resume=True)
    assert list(read_dataset(path).columns) == list(COLUMNS)


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from tests.test_dataset import SETTINGS_A, SPACE, make_row
    from profiler.dataset import DatasetWriter
    archs = SPACE.sample_many(400, seed=1)
    with DatasetWriter({path!r}, SETTINGS_A, resume=False) as writer:
        for i, arch in enumerate(archs):
            writer.write(*make_row(arch, i))
""")


def test_sigkill_mid_run_leaves_complete_rows(tmp_path):
    path = tmp_path / "killed.csv"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), path=str(path)))
    child = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120  # a bound on waiting, not a timing claim
        while child.poll() is None and time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= 6:
                break
            time.sleep(0.01)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    if path.read_bytes().endswith(b"\n"):  # almost always: each row is one write() call
        assert len(read_dataset(path)) >= 5  # readable exactly as the kill left it
    with DatasetWriter(path, SETTINGS_A, resume=True) as writer:
        done = writer.done_ids
    df = read_dataset(path)
    assert len(df) == len(done) >= 5
    assert not df[list(HAT_COLUMNS) + ["latency_ms", "latency_median_ms", "round_spread"]].isna().any().any()
    raw_ids = [r["arch_id"] for r in raw_lines(path)]
    assert raw_ids == df["arch_id"].tolist()  # every row has its raw samples, and nothing else remains
    for line, (_, got) in zip(raw_path_for(path).read_text().splitlines(), df.iterrows()):
        assert recompute_from_raw(line, 0.1)["latency_ms"] == got["latency_ms"]


# -- reading --------------------------------------------------------------------------------------

def test_read_dataset_accepts_hats_14_columns(tmp_path):
    path = tmp_path / "hat.csv"
    path.write_text(HAT_HEADER + "\n" + "\n".join(HAT_ROWS) + "\n")
    df = read_dataset(path)
    assert list(df.columns) == list(HAT_COLUMNS) and len(df) == 3
    assert df["latency_mean_decoder"].iloc[0] == 5932.554125785828


@pytest.mark.parametrize("content, match", [
    (None, "no such"),
    (b"", "empty"),
    (b"hello world\nthis is not a table\n", "missing column"),
    (bytes(range(256)) * 4, "cannot read|not a latency dataset"),
    ((HAT_HEADER + "\n" + HAT_ROWS[0] + "\n" + HAT_ROWS[1].replace("221.16339206695557", "") + "\n").encode(),
     "latency_mean_encoder.*line.* 3"),
    ((HAT_HEADER + "\n" + HAT_ROWS[0].replace("1990.0972843170166", "fast") + "\n").encode(), "latency_mean_encoder"),
    ((",".join(HAT_COLUMNS[:-1]) + "\n1,2,3\n").encode(), "latency_std_decoder"),
])
def test_read_dataset_errors(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match=match) as info:
        read_dataset(path)
    assert "\n" not in str(info.value)


def test_read_dataset_of_a_directory(tmp_path):
    with pytest.raises(DatasetError, match="directory"):
        read_dataset(tmp_path)


# -- import-hat and info --------------------------------------------------------------------------

@pytest.mark.parametrize("index_column", [False, True])
def test_import_hat(tmp_path, index_column):
    src = tmp_path / "wmt14ende_cpu_raspberrypi_all.csv"
    if index_column:  # some copies carry an unnamed pandas index column
        lines = ["," + HAT_HEADER] + [f"{i},{row}" for i, row in enumerate(HAT_ROWS)]
    else:
        lines = [HAT_HEADER] + HAT_ROWS
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "rpi.csv"
    assert import_hat(src, out) == (3, load_space("hat-latency"))  # heads of 2 and FFN 1536: the wider space
    df = read_dataset(out)
    assert list(df.columns) == list(COLUMNS)
    for (_, got), line in zip(df.iterrows(), HAT_ROWS):
        expected = [float(v) for v in line.split(",")]
        assert [got[c] for c in HAT_COLUMNS] == expected
        assert got["latency_ms"] == expected[10] + expected[11]
        assert got["device"] == "wmt14ende_cpu_raspberrypi_all"
        assert got["arch"] == "" and got["arch_id"] == ""
        assert got["space"] == "hat-latency" and got["space_digest"] == load_space("hat-latency").digest
    assert df["runs"].isna().all() and df["measured_at"].eq("").all()
    assert dataset_info(out)["unstable"] is None
    assert not raw_path_for(out).exists()


def test_import_hat_device_argument_and_errors(tmp_path):
    src = tmp_path / "hat.csv"
    src.write_text(HAT_HEADER + "\n" + "\n".join(HAT_ROWS) + "\n")
    out = tmp_path / "x.csv"
    import_hat(src, out, device="rpi4")
    assert read_dataset(out)["device"].tolist() == ["rpi4"] * 3
    with pytest.raises(DatasetError, match="already exists"):
        import_hat(src, out)
    with pytest.raises(DatasetError, match="no such"):
        import_hat(tmp_path / "missing.csv", tmp_path / "y.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(HAT_HEADER.replace("latency_std_decoder", "latency_sd_decoder") + "\n" + HAT_ROWS[0] + "\n")
    with pytest.raises(DatasetError, match="latency_std_decoder"):
        import_hat(bad, tmp_path / "z.csv")
    bad.write_text(HAT_HEADER + "\n" + HAT_ROWS[0].replace("512", "big", 1) + "\n")
    with pytest.raises(DatasetError, match="line 2"):
        import_hat(bad, tmp_path / "z.csv")
    assert not (tmp_path / "z.csv").exists()


def test_dataset_info(tmp_path, archs):
    path = tmp_path / "lat.csv"
    rows = write_rows(path, archs[:4])
    with DatasetWriter(path, SETTINGS_A, resume=True) as writer:
        drifting = make_row(archs[4], 50, drift=0.2)
        writer.write(*drifting)
    info = dataset_info(path)
    json.dumps(info)
    latencies = [r["latency_ms"] for r in rows] + [drifting[0]["latency_ms"]]
    assert info["rows"] == 5 and info["devices"] == ["local"]
    assert info["settings"]["runs"] == [30] and info["settings"]["trim"] == [0.1]
    assert info["latency_ms"] == {"min": min(latencies), "median": statistics.median(latencies),
                                  "max": max(latencies)}
    assert info["unstable"] == sum(bool(r["unstable"]) for r in rows) + 1
    assert info["raw_sidecar"] == str(raw_path_for(path))
    intervals = [r["interval"] for r in rows] + [drifting[0]["interval"]]
    assert info["quality"] == {"re_measured": 0, "interval_median": statistics.median(intervals),
                               "interval_max": max(intervals), "device_s_per_row": 0.0}


def test_dataset_info_of_hats_columns_only(tmp_path):
    path = tmp_path / "hat.csv"
    path.write_text(HAT_HEADER + "\n" + "\n".join(HAT_ROWS) + "\n")
    info = dataset_info(path)
    totals = [float(r.split(",")[10]) + float(r.split(",")[11]) for r in HAT_ROWS]
    assert info["rows"] == 3 and info["devices"] == [] and info["unstable"] is None and info["quality"] is None
    assert info["latency_ms"]["max"] == max(totals)


# -- output location ------------------------------------------------------------------------------

def test_unwritable_targets_fail_up_front(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        DatasetWriter(blocker / "lat.csv", SETTINGS_A)
    with pytest.raises(DatasetError, match="directory"):
        DatasetWriter(tmp_path, SETTINGS_A, resume=True)


def test_missing_parent_directories_are_created(tmp_path, archs):
    path = tmp_path / "a" / "b" / "lat.csv"
    write_rows(path, archs[:1])
    assert len(read_dataset(path)) == 1


def test_raw_sidecar_name():
    assert raw_path_for("data/rpi4.csv") == Path("data/rpi4.raw.jsonl")
    assert raw_path_for("data/rpi4") == Path("data/rpi4.raw.jsonl")


def test_import_hat_writes_the_usual_file_mode(tmp_path):
    src = tmp_path / "hat.csv"
    src.write_text("\n".join([HAT_HEADER] + HAT_ROWS) + "\n")
    old = os.umask(0o022)
    try:
        import_hat(src, tmp_path / "rpi.csv")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "rpi.csv").st_mode & 0o777 == 0o644


def test_a_new_file_that_got_no_row_is_not_left_as_a_header_alone(tmp_path):
    path = tmp_path / "empty.csv"
    DatasetWriter(path, SETTINGS_A).close()
    assert not path.exists() and not raw_path_for(path).exists()


def test_import_hat_records_the_space_given_or_inferred(tmp_path):
    src = tmp_path / "hat.csv"
    src.write_text(HAT_HEADER + "\n" + "\n".join(HAT_ROWS) + "\n")
    with pytest.raises(DatasetError, match=r"line 2: .*heads_avg=2.66667 is outside space 'wmt14.en-de'"):
        import_hat(src, tmp_path / "wmt.csv", space=load_space("wmt14.en-de"))
    assert not (tmp_path / "wmt.csv").exists()
    # IWSLT's space: FFN 512-2048 and heads 2-4, so these rows fit it and not WMT's
    iwslt = "640,6,1024.0,3.0,640,2,512.0,2.0,4.0,1.0,100.0,200.0,1.0,2.0"
    src.write_text(HAT_HEADER + "\n" + iwslt + "\n")
    rows, space = import_hat(src, tmp_path / "iwslt.csv")
    assert (rows, space.name) == (1, "iwslt14.de-en")
    assert read_dataset(tmp_path / "iwslt.csv")["space"].tolist() == ["iwslt14.de-en"]
    src.write_text(HAT_HEADER + "\n" + iwslt.replace("640,6,", "1024,6,", 1) + "\n")
    with pytest.raises(DatasetError, match="no built-in design space holds"):
        import_hat(src, tmp_path / "none.csv")
