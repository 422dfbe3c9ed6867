"""The Ray backend: device names as node resources, the same fleet code, on a local Ray cluster."""
from __future__ import annotations

import json
import os

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a local Ray cluster takes tens of seconds to start

from click.testing import CliRunner  # noqa: E402

from _agent_support import REPO  # noqa: E402
from device_agents.fleet import collect  # noqa: E402
from device_agents.ray_backend import RayTarget, ray_fleet  # noqa: E402
from hatprof.cli import cli  # noqa: E402
from profiler.dataset import raw_path_for, read_dataset  # noqa: E402
from profiler.errors import DeviceError  # noqa: E402
from profiler.measure import MeasureJob  # noqa: E402
from profiler.protocol import TimingProtocol  # noqa: E402
from profiler.space import load_space  # noqa: E402

SPACE = load_space("compact")
PROTOCOL = TimingProtocol.hat(warmup=0, runs=4, rounds=2, seq_len=4, beam=2)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster whose one node advertises two units of the device 'raydev'."""
    ray.init(num_cpus=2, resources={"raydev": 2}, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "HATPROF_CACHE": os.environ["HATPROF_CACHE"]}})
    yield
    ray.shutdown()


def test_collect_places_work_on_the_device_resource(cluster, tmp_path):
    devices = ray_fleet(["raydev"], PROTOCOL)
    assert len(devices) == 1 and len(devices[0].targets) == 2
    assert all(isinstance(t, RayTarget) for t in devices[0].targets)
    archs = SPACE.sample_many(3, seed=3)
    reports = collect(devices, archs, MeasureJob(space=SPACE, protocol=PROTOCOL, interleave=1), tmp_path)
    assert reports["raydev"].measured == 3 and not reports["raydev"].failed
    table = read_dataset(tmp_path / "raydev.csv")
    assert sorted(table["arch_id"]) == sorted(a.arch_id for a in archs)
    assert set(table["device"]) == {"raydev"} and set(table["host"]) == {"raydev"}
    assert len(raw_path_for(tmp_path / "raydev.csv").read_text().splitlines()) == 3
    for target in devices[0].targets:
        target.close()


def test_a_device_no_node_advertises_is_a_clear_error(cluster):
    with pytest.raises(DeviceError, match="no Ray node advertises the resource 'rpi4'.*raydev"):
        ray_fleet(["rpi4"], PROTOCOL)


def test_collect_command_with_the_ray_backend(cluster, tmp_path):
    result = CliRunner().invoke(cli, [
        "collect", "--backend", "ray", "--devices", "raydev", "--space", "compact", "--samples", "2",
        "--seed", "3", "--out", str(tmp_path), "--fixed", "--runs", "4", "--rounds", "2", "--warmup", "0",
        "--seq-len", "4", "--beam", "2"])
    assert result.exit_code == 0, result.output
    assert "raydev: 2/2 rows" in result.output


def test_collect_in_duet_mode_sends_the_reference_to_the_actor(cluster, tmp_path):
    result = CliRunner().invoke(cli, [
        "collect", "--backend", "ray", "--devices", "raydev", "--space", "compact", "--samples", "1",
        "--seed", "4", "--out", str(tmp_path), "--fixed", "--runs", "4", "--rounds", "2", "--warmup", "0",
        "--seq-len", "4", "--beam", "2", "--duet"])
    assert result.exit_code == 0, result.output
    table = read_dataset(tmp_path / "raydev.csv")
    assert list(table["reference"]) == [SPACE.smallest().arch_id] and table["reference_ms"].iloc[0] > 0
    raw = json.loads(raw_path_for(tmp_path / "raydev.csv").read_text())
    # 2 runs a round, the reference timed before, between and after them; it is the reference model,
    # not the canary (whose probe the gate recorded): four beam-search steps take far longer
    rounds = raw["environment"]["rounds"]
    assert [len(r["canary_ns"][part]) for r in rounds for part in ("encoder", "decoder")] == [3, 3, 3, 3]
    assert all(min(r["canary_ns"]["decoder"]) > 2 * r["gate"]["seen"]["canary_ns"] for r in rounds)
