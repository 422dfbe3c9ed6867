"""Fleet collection: paired datasets, shared work, and resumption after SIGKILL of anything."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from _agent_support import REPO, TOKEN, request, spawn_agent, start_agent, stop_process, wait_until
from device_agents.fleet import collect, fleet_from_inventory
from device_agents.inventory import load_inventory
from profiler.artifacts import get_artifact
from hatprof.cli import cli
from profiler.dataset import raw_path_for, recompute_from_raw
from profiler.measure import MeasureJob
from profiler.protocol import TimingProtocol
from profiler.space import load_space

SPACE = load_space("compact")
PROTOCOL = TimingProtocol.hat(warmup=0, runs=4, rounds=2, seq_len=4, beam=2)
#: One sample for every test, so each architecture is exported once per session.
ARCHS = SPACE.sample_many(6, seed=3)
PROTOCOL_ARGS = ["--fixed", "--runs", "4", "--rounds", "2", "--warmup", "0", "--seq-len", "4", "--beam", "2"]


def write_inventory(path: Path, devices: dict[str, list[str]], retries: int = 1) -> Path:
    (path.parent / "fleet.token").write_text(TOKEN)
    (path.parent / "fleet.token").chmod(0o600)
    lines = []
    for name, urls in devices.items():
        lines += [f"[devices.{name}]", f"agents = {json.dumps(urls)}", 'token_file = "fleet.token"',
                  f"retries = {retries}", "timeout_s = 30"]
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(csv: Path) -> list[dict]:
    import csv as csv_module

    with csv.open() as f:
        return list(csv_module.DictReader(f))


def check_dataset(csv: Path, expected_ids: set[str]) -> list[dict]:
    """Exactly one row per expected architecture, each with its raw samples, statistics intact."""
    table = rows(csv)
    ids = [r["arch_id"] for r in table]
    assert len(ids) == len(set(ids)), "an architecture was written twice"
    assert set(ids) == expected_ids
    raw_lines = [json.loads(line) for line in raw_path_for(csv).read_text().splitlines()]
    assert sorted(r["arch_id"] for r in raw_lines) == sorted(ids)
    by_id = {r["arch_id"]: r for r in raw_lines}
    for row in table:
        stats = recompute_from_raw(by_id[row["arch_id"]], float(row["trim"]))
        assert float(row["latency_ms"]) == stats["latency_ms"]
        assert int(row["runs"]) == PROTOCOL.runs and len(by_id[row["arch_id"]]["encoder_ms"]) == PROTOCOL.runs
    return table


@pytest.fixture
def agents(tmp_path):
    servers = [start_agent(tmp_path / f"agent{i}") for i in range(3)]
    yield servers
    for server in servers:
        server.close()


def test_collect_pairs_devices_and_resumes_without_remeasuring(tmp_path, agents):
    inventory = load_inventory(write_inventory(tmp_path / "devices.toml", {
        "pair": [agents[0].url, agents[1].url], "single": [agents[2].url]}))
    archs = ARCHS[:5]
    for arch in archs:  # exported first: all work is ready at once, so both agents of "pair" get some
        get_artifact(arch, SPACE, "onnx")
    job = MeasureJob(space=SPACE, protocol=PROTOCOL, interleave=2)
    progress = []
    reports = collect(fleet_from_inventory(inventory, ["pair", "single"], PROTOCOL), archs, job,
                      tmp_path / "out", on_progress=progress.append)
    ids = {a.arch_id for a in archs}
    for name in ("pair", "single"):
        assert reports[name].measured == 5 and not reports[name].failed
        table = check_dataset(tmp_path / "out" / f"{name}.csv", ids)
        assert {r["device"] for r in table} == {name}
    assert {rows(tmp_path / "out" / "pair.csv")[0]["host"], rows(tmp_path / "out" / "single.csv")[0]["host"]} \
        == {"pair", os.uname().nodename}
    assert progress[-1].device in ("pair", "single") and any(p.done == 5 for p in progress)
    for name in ("pair", "single"):  # the last line of each device counts every row by its kind, and has an ETA
        states = [(p.done, p.failed, p.kinds, p.agents_live, p.silent) for p in progress if p.device == name]
        assert all(a != b for a, b in zip(states, states[1:])), states  # nothing said twice in a row
        last = [p for p in progress if p.device == name][-1]
        assert sum(last.kinds.values()) == 5 and last.kinds == reports[name].kinds
        assert last.eta_s == 0 and "ETA 0:00" in last.line() and "unstable" in last.line()
    unstable = sum(bool(r["unstable"] == "True") for name in ("pair", "single")
                   for r in rows(tmp_path / "out" / f"{name}.csv"))
    assert sum(reports[name].kinds["unstable"] for name in ("pair", "single")) == unstable
    # both agents of "pair" took a share of the work
    served = [a.agent.store.stats()["blobs"] for a in agents[:2]]
    assert all(served), served

    again = collect(fleet_from_inventory(inventory, ["pair", "single"], PROTOCOL), archs, job, tmp_path / "out")
    assert [(r.already, r.measured, r.failed) for r in again.values()] == [(5, 0, [])] * 2
    check_dataset(tmp_path / "out" / "pair.csv", ids)


def test_collect_command_line(tmp_path, agents):
    path = write_inventory(tmp_path / "devices.toml", {"one": [agents[0].url]})
    args = ["collect", "--devices", "one", "--inventory", str(path), "--space", "compact", "--samples", "2",
            "--seed", "3", "--out", str(tmp_path / "out"), *PROTOCOL_ARGS]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "one: 2/2 rows" in result.output
    check_dataset(tmp_path / "out" / "one.csv", {a.arch_id for a in ARCHS[:2]})
    bad = CliRunner().invoke(cli, args + ["--threads", "2"])
    assert bad.exit_code == 2 and "inventory" in bad.output
    unknown = CliRunner().invoke(cli, [*args[:2], "nope", *args[3:]])
    assert unknown.exit_code == 1 and "unknown device 'nope'" in unknown.output


def _row_count(csv: Path) -> int:
    try:
        return max(0, len(csv.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def test_sigkill_of_an_agent_mid_run_loses_and_duplicates_nothing(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, first_url = spawn_agent(tmp_path / "a")
    second, second_url = spawn_agent(tmp_path / "b")
    try:
        inventory = load_inventory(write_inventory(tmp_path / "devices.toml", {"pi": [first_url, second_url]}))
        archs = ARCHS
        protocol = TimingProtocol.hat(warmup=0, runs=200, rounds=2, seq_len=4, beam=2)
        job = MeasureJob(space=SPACE, protocol=protocol, interleave=1)
        for arch in archs:  # export first, so the run is all measuring
            get_artifact(arch, SPACE, "onnx")
        reports = {}
        thread = threading.Thread(target=lambda: reports.update(collect(
            fleet_from_inventory(inventory, ["pi"], protocol), archs, job, tmp_path / "out")))
        thread.start()
        assert wait_until(lambda: request(first_url, "GET", "/v1/health", token=None)[2]["busy"], timeout=120)
        first.send_signal(signal.SIGKILL)
        thread.join(300)
        report = reports["pi"]
        assert report.lost_agents == [first_url]
        assert report.measured == 6 and not report.failed
        table = rows(tmp_path / "out" / "pi.csv")
        assert len(table) == 6
        assert len({r["arch_id"] for r in table}) == 6
    finally:
        stop_process(first)
        stop_process(second)


def test_sigkill_of_the_coordinator_then_rerun_completes_exactly(tmp_path, agents):
    path = write_inventory(tmp_path / "devices.toml", {"pi": [agents[0].url]})
    archs = ARCHS
    for arch in archs:
        get_artifact(arch, SPACE, "onnx")
    out = tmp_path / "out"
    args = ["collect", "--devices", "pi", "--inventory", str(path), "--space", "compact", "--samples", "6",
            "--seed", "3", "--out", str(out), "--interleave", "1",
            "--fixed", "--runs", "300", "--rounds", "2", "--warmup", "0", "--seq-len", "4", "--beam", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    coordinator = subprocess.Popen([sys.executable, "-c", "from hatprof.cli import main; main()", *args],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: _row_count(out / "pi.csv") >= 1 or coordinator.poll() is not None, timeout=120)
        coordinator.send_signal(signal.SIGKILL)
    finally:
        coordinator.wait()
    before = _row_count(out / "pi.csv")
    assert 1 <= before < 6, before  # killed mid-run
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"({6 - before} new, {before} already there)" in result.output
    check_dataset_ids = {a.arch_id for a in archs}
    table = rows(out / "pi.csv")
    assert len(table) == 6 and {r["arch_id"] for r in table} == check_dataset_ids
    raw_ids = [json.loads(line)["arch_id"] for line in raw_path_for(out / "pi.csv").read_text().splitlines()]
    assert sorted(raw_ids) == sorted(check_dataset_ids)


def test_collect_names_what_a_rerun_needs_and_leaves_no_header_only_file(tmp_path, agents):
    import socket

    with socket.socket() as probe:  # a port nobody listens on: the agent is down
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    path = write_inventory(tmp_path / "devices.toml", {"down": [dead], "one": [agents[0].url]}, retries=0)
    base = ["collect", "--inventory", str(path), "--space", "compact", "--samples", "1", "--seed", "3",
            "--out", str(tmp_path / "out"), *PROTOCOL_ARGS]
    down = CliRunner().invoke(cli, [*base, "--devices", "down"])
    assert down.exit_code == 1 and "could not be reached" in down.output and "start it" in down.output
    refused = CliRunner().invoke(cli, [*base, "--devices", "one", "--format", "torchscript"])
    assert refused.exit_code == 1 and "--allow-torchscript" in refused.output, refused.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # no header-only one.csv
