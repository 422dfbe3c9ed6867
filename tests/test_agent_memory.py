"""The agent's measuring process has a memory cap, and a failed call costs the process, not the memory."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from _agent_support import TOKEN, request, start_agent
from device_agents.agent import _parser, _config
from device_agents.client import AgentClient, AgentError
from profiler.protocol import RoundSpec

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/limits")
SPEC = RoundSpec(warmup=0, runs=2, seq_len=4, beam=2, canary_every=0)
CAP_MB = 512


def _bomb_encoder(floats: int) -> bytes:
    """A few hundred bytes of ONNX whose encoder_states is `floats` floats (ConstantOfShape)."""
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("Cast", ["src_tokens"], ["t"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["t"], ["s"], keepdims=0),
             helper.make_node("Add", ["c", "s"], ["encoder_states"])]
    graph = helper.make_graph(
        nodes, "bomb", [helper.make_tensor_value_info("src_tokens", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info("encoder_states", TensorProto.FLOAT, [floats])],
        [numpy_helper.from_array(np.array([floats], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _data_limit(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max data size"))
    return line.split()[3]  # the soft limit, in bytes


@linux
def test_a_memory_bomb_fails_under_the_cap_and_its_worker_is_replaced(tmp_path, artifact):
    bomb_dir = tmp_path / "bomb"
    shutil.copytree(artifact, bomb_dir)
    # 2 x 1.6 GB when run; a 512 MiB cap stops it at the first allocation
    (bomb_dir / "encoder.onnx").write_bytes(_bomb_encoder(400_000_000))
    assert len((bomb_dir / "encoder.onnx").read_bytes()) < 300
    server = start_agent(tmp_path / "cache", max_memory_mb=CAP_MB)
    try:
        client = AgentClient(server.url, TOKEN, retries=0)
        client.info()
        first = server.agent.worker.pid
        assert _data_limit(first) == str(CAP_MB << 20)
        with pytest.raises(AgentError) as failed:
            client.measure(bomb_dir, "onnx", SPEC)
        assert (failed.value.code, failed.value.status) == ("measure_failed", 422)
        assert "allocate" in str(failed.value)  # refused at the cap, not after taking the memory
        assert server.agent.worker.pid is None  # the failed worker is gone, with whatever it held
        response = client.measure(artifact, "onnx", SPEC)  # a fresh worker, under the same cap
        assert len(response["result"]["encoder_ns"]) == SPEC.runs
        assert server.agent.worker.pid != first and _data_limit(server.agent.worker.pid) == str(CAP_MB << 20)
        assert client.info()["agent"]["limits"]["max_memory_mb"] == CAP_MB
    finally:
        server.close()


def test_a_failed_validation_replaces_the_worker(tmp_path):
    import hashlib

    server = start_agent(tmp_path / "cache")
    try:
        client = AgentClient(server.url, TOKEN, retries=0)
        client.info()
        assert server.agent.worker.pid is not None
        data = b"not an onnx model"
        status, _, body = request(server.url, "PUT", f"/v1/artifacts/{hashlib.sha256(data).hexdigest()}/encoder.onnx",
                                  data)
        assert (status, body["error"]["code"]) == (422, "invalid_artifact")
        assert server.agent.worker.pid is None
    finally:
        server.close()


def test_the_cap_is_a_command_line_option_defaulting_to_half_the_memory(tmp_path, monkeypatch):
    import psutil

    monkeypatch.setenv("HATPROF_AGENT_TOKEN", TOKEN)
    base = ["serve", "--cache-dir", str(tmp_path)]
    assert _config(_parser().parse_args([*base, "--max-memory-mb", "768"])).max_memory_mb == 768
    assert _config(_parser().parse_args([*base, "--max-memory-mb", "0"])).max_memory_mb is None
    default = _config(_parser().parse_args(base)).max_memory_mb
    assert default == psutil.virtual_memory().total // 2 // (1 << 20)
    from profiler.errors import HatprofError

    with pytest.raises(HatprofError, match="--max-memory-mb"):
        _config(_parser().parse_args([*base, "--max-memory-mb", "64"]))
