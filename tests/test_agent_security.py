"""The agent refuses what it must, with the right status and code, and keeps serving."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from _agent_support import SMALL, SPEC, TOKEN, raw, request, start_agent, wait_until
from device_agents.client import AgentClient
from device_agents.wire import ERROR_STATUS

MIB = 1 << 20


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    server = start_agent(tmp_path_factory.mktemp("agent"), max_upload_bytes=16 * MIB, socket_timeout_s=5)
    yield server
    server.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_of(artifact) -> dict[str, str]:
    return {p.name: sha(p.read_bytes()) for p in artifact.iterdir() if not p.name.startswith(".")}


def measure_body(art, /, **changes) -> dict:
    body = {"artifact": {"format": "onnx", "files": files_of(art)}, **SMALL}
    body.update(changes)
    return body


def post_json(agent, body, token=TOKEN, path="/v1/measure"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(agent.url, "POST", path, data, {"Content-Type": "application/json"}, token=token)


def put(agent, digest: str, name: str, data: bytes, token=TOKEN):
    return request(agent.url, "PUT", f"/v1/artifacts/{digest}/{name}", data, token=token)


def assert_error(response, status: int, code: str) -> dict:
    got_status, _, body = response
    assert (got_status, body["error"]["code"]) == (status, code), body
    assert ERROR_STATUS[code] == status
    assert "Traceback" not in json.dumps(body)
    return body["error"]


def assert_serving(agent) -> None:
    status, _, body = request(agent.url, "GET", "/v1/health", token=None)
    assert status == 200 and body["status"] == "ok"


def test_health_needs_no_token(agent):
    status, headers, body = request(agent.url, "GET", "/v1/health", token=None)
    assert status == 200
    assert body == {"status": "ok", "protocol": 1, "busy": False}
    assert headers["Content-Type"] == "application/json"
    assert "Python" not in headers.get("Server", "")


@pytest.mark.parametrize("authorization", [
    None, "Bearer wrong-token-wrong-token-wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ",
    f"bearer{TOKEN}", f"Bearer {TOKEN[:-1]}",
])
def test_info_without_the_right_token_is_401(agent, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    status, response_headers, body = request(agent.url, "GET", "/v1/info", headers=headers, token=None)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert response_headers["WWW-Authenticate"].startswith("Bearer")


def test_unauthenticated_requests_do_no_work(tmp_path, artifact):
    server = start_agent(tmp_path / "cache")
    try:
        encoder = (artifact / "encoder.onnx").read_bytes()
        assert_error(put(server, sha(encoder), "encoder.onnx", encoder, token=None), 401, "unauthorized")
        assert_error(put(server, sha(encoder), "encoder.onnx", encoder, token="w" * 32), 401, "unauthorized")
        assert_error(post_json(server, measure_body(artifact), token=None), 401, "unauthorized")
        assert_error(request(server.url, "GET", "/v1/info", token="x" * 40), 401, "unauthorized")
        assert server.agent.worker._process is None  # nothing was validated, measured or even started
        assert server.agent.store.stats()["blobs"] == 0
        assert not list((tmp_path / "cache" / "tmp").iterdir())
        assert_serving(server)
    finally:
        server.close()


def test_oversized_json_body_is_413_without_reading_it(agent):
    head = (f"POST /v1/measure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {2 * MIB}\r\n\r\n").encode()
    status, body = raw(agent.url, head + b"{" * 1000)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert_serving(agent)


def test_oversized_upload_is_413(agent):
    head = (f"PUT /v1/artifacts/{'a' * 64}/encoder.onnx HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {16 * MIB + 1}\r\n\r\n").encode()
    status, body = raw(agent.url, head)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    manifest = b"{" + b" " * (MIB + 10) + b"}"  # manifests have a smaller cap
    assert_error(put(agent, sha(manifest), "manifest.json", manifest), 413, "payload_too_large")
    assert_serving(agent)


@pytest.mark.parametrize("name, data", [
    ("encoder.onnx", b"this is not an onnx model at all"),
    ("encoder.onnx", bytes(range(256)) * 8),
    ("encoder.onnx", b""),
    ("manifest.json", b"not json"),
    ("manifest.json", b'{"format": "onnx"}'),
    ("manifest.json", b"[1, 2, 3]"),
    ("manifest.json", b'{"format": "onnx", "format": "onnx"}'),
])
def test_invalid_artifact_files_are_422_and_not_stored(agent, name, data):
    error = assert_error(put(agent, sha(data), name, data), 422, "invalid_artifact")
    assert error["message"]
    assert not agent.agent.store.has(sha(data), "onnx" if name.endswith(".onnx") else "json")
    assert_serving(agent)


def _model_with_external_data() -> bytes:
    weight = numpy_helper.from_array(np.ones(4, np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", "../../../../etc/passwd"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    return helper.make_model(graph).SerializeToString()


def test_onnx_with_external_data_is_refused(agent):
    data = _model_with_external_data()
    error = assert_error(put(agent, sha(data), "encoder.onnx", data), 422, "invalid_artifact")
    assert "external data" in error["message"]


def test_onnx_external_data_refused_without_onnx_installed(tmp_path):
    """The fallback when onnx is absent: onnxruntime loads the model from bytes, so it cannot read files."""
    from device_agents.validate import ValidationError, check_onnx

    path = tmp_path / "encoder.onnx"
    path.write_bytes(_model_with_external_data())
    with pytest.raises(ValidationError, match="onnxruntime cannot load it"):
        check_onnx(path, use_onnx=False)


def test_valid_onnx_passes_both_validations(tmp_path):
    from device_agents.validate import check_onnx

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    onnx.checker.check_model(onnx.load(path))
    check_onnx(path, use_onnx=True)
    check_onnx(path, use_onnx=False)


@pytest.mark.parametrize("graphs", [
    {"encoder": "../../etc/passwd", "cross_kv": "cross_kv.onnx", "decoder_step": "decoder_step.onnx"},
    {"encoder": "/etc/passwd", "cross_kv": "cross_kv.onnx", "decoder_step": "decoder_step.onnx"},
    {"encoder": "encoder.onnx", "cross_kv": "cross_kv.onnx"},
])
def test_manifest_naming_other_files_is_refused(agent, artifact, graphs):
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["graphs"] = graphs
    data = json.dumps(manifest).encode()
    assert_error(put(agent, sha(data), "manifest.json", data), 422, "invalid_artifact")


def test_truncated_json_is_400(agent, artifact):
    text = json.dumps(measure_body(artifact)).encode()
    for cut in (1, len(text) // 2, len(text) - 1):
        assert_error(post_json(agent, text[:cut]), 400, "bad_json")
    assert_error(post_json(agent, b"[" * 100_000), 400, "bad_json")  # nesting bomb
    assert_error(post_json(agent, b'{"runs": NaN}'), 400, "bad_json")
    assert_error(post_json(agent, b"\xff\xfe{}"), 400, "bad_json")
    assert_serving(agent)


def test_body_shorter_than_its_length_is_400(agent):
    head = (f"POST /v1/measure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n").encode()
    status, body = raw(agent.url, head + b'{"artifact": ')
    assert status == 400 and body["error"]["code"] == "bad_json"


def test_unknown_fields_are_400(agent, artifact):
    error = assert_error(post_json(agent, measure_body(artifact, evil=1)), 400, "unknown_field")
    assert error["fields"] == ["evil"]
    body = measure_body(artifact)
    body["artifact"]["path"] = "/etc"
    assert_error(post_json(agent, body), 400, "unknown_field")
    assert_error(request(agent.url, "GET", "/v1/info?threads=1&x=2"), 400, "unknown_field")


@pytest.mark.parametrize("changes, code", [
    ({"runs": "10"}, "invalid_field"), ({"runs": 0}, "invalid_field"), ({"runs": True}, "invalid_field"),
    ({"runs": 10.5}, "invalid_field"), ({"threads": 10 ** 9}, "invalid_field"),
    ({"warmup": -1}, "invalid_field"), ({"trim": 0.5}, "invalid_field"), ({"beam": None}, "invalid_field"),
    ({"artifact": "x"}, "invalid_field"), ({"artifact": {"format": "exe", "files": {}}}, "invalid_field"),
    ({"artifact": {"format": "onnx", "files": []}}, "invalid_field"),
])
def test_wrong_types_and_ranges_are_400(agent, artifact, changes, code):
    assert_error(post_json(agent, measure_body(artifact, **changes)), 400, code)


def test_path_like_names_are_refused(agent, tmp_path):
    data = b"x"
    digest = sha(data)
    for name in ("..%2F..%2Fpwned", "%2e%2e", "encoder.onnx%00", "ENCODER.ONNX", ".files.json", "encoder.exe"):
        assert_error(put(agent, digest, name, data), 400, "bad_filename")
    assert_error(put(agent, "../" * 5 + "x", "encoder.onnx", data), 404, "not_found")
    assert_error(request(agent.url, "PUT", f"/v1/artifacts/{digest}/../../x", data), 404, "not_found")
    assert_error(request(agent.url, "PUT", f"/v1/artifacts/{'..' * 32}/encoder.onnx", data), 400, "bad_hash")
    body = {"artifact": {"format": "onnx", "files": {"../encoder.onnx": digest, "cross_kv.onnx": digest,
                                                     "decoder_step.onnx": digest, "manifest.json": digest}}}
    assert_error(post_json(agent, body), 400, "bad_filename")
    root = agent.agent.store.root
    names = {p.name for p in root.parent.rglob("*")}
    assert "pwned" not in names and not (root.parent / "x").exists()


def test_hash_mismatch_is_400_and_not_stored(agent, artifact):
    data = (artifact / "encoder.onnx").read_bytes()
    wrong = sha(data + b"!")
    error = assert_error(put(agent, wrong, "encoder.onnx", data), 400, "hash_mismatch")
    assert error["actual"] == sha(data)
    assert not agent.agent.store.has(wrong, "onnx") and not agent.agent.store.has(sha(data), "onnx")
    assert_error(put(agent, sha(data).upper(), "encoder.onnx", data), 400, "bad_hash")
    assert_error(put(agent, sha(data)[:63], "encoder.onnx", data), 400, "bad_hash")


def test_torchscript_is_refused_unless_allowed(agent, artifact):
    assert_error(put(agent, "a" * 64, "encoder.pt", b"PK"), 403, "format_not_allowed")
    body = {"artifact": {"format": "torchscript", "files": {
        n: "a" * 64 for n in ("manifest.json", "encoder.pt", "cross_kv.pt", "decoder_step.pt")}}}
    assert_error(post_json(agent, body), 403, "format_not_allowed")


def test_http_level_errors_are_json(agent):
    assert_error(request(agent.url, "GET", "/v2/health", token=None), 404, "not_found")
    assert_error(request(agent.url, "GET", "/v1/measure"), 405, "method_not_allowed")
    assert_error(request(agent.url, "DELETE", "/v1/info"), 405, "method_not_allowed")
    assert_error(request(agent.url, "OPTIONS", "/v1/info"), 405, "method_not_allowed")
    assert_error(request(agent.url, "POST", "/v1/measure", b"{}", {"Content-Type": "text/plain"}),
                 415, "unsupported_media_type")
    status, body = raw(agent.url, f"POST /v1/measure HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    assert status == 411 and body["error"]["code"] == "length_required"
    status, body = raw(agent.url, f"POST /v1/measure HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                                  "Content-Length: -5\r\n\r\n".encode())
    assert status == 400 and body["error"]["code"] == "bad_request"
    for garbage in (b"GARBAGE\r\n\r\n", b"GET /v1/health\r\n\r\n", b"\x00\xff \x01 \x02 \x03\r\n\r\n"):
        status, body = raw(agent.url, garbage)
        assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = raw(agent.url, b"GET /v1/health HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n")
    assert status == 431 and body["error"]["code"] == "bad_request"
    assert_serving(agent)


def test_missing_files_are_409_listing_them(agent, artifact):
    error = assert_error(post_json(agent, measure_body(artifact, runs=3)), 409, "missing_artifact")
    assert sorted(m["filename"] for m in error["missing"]) == sorted(files_of(artifact))


def test_upload_then_measure_and_repeat_upload(agent, artifact):
    client = AgentClient(agent.url, TOKEN, retries=0)
    response = client.measure(artifact, "onnx", SPEC)
    assert len(response["result"]["encoder_ns"]) == SMALL["runs"]
    data = (artifact / "manifest.json").read_bytes()
    status, _, body = put(agent, sha(data), "manifest.json", data)
    assert (status, body["stored"]) == (200, False)


def test_busy_is_503_with_retry_after(tmp_path):
    server = start_agent(tmp_path / "cache", queue=0, queue_wait_s=0)
    try:
        assert server.agent._device.acquire()
        try:
            status, headers, body = request(server.url, "GET", "/v1/info")
            assert (status, body["error"]["code"]) == (503, "busy")
            assert int(headers["Retry-After"]) > 0
            assert request(server.url, "GET", "/v1/health", token=None)[2]["busy"] is True
        finally:
            server.agent._device.release()
        assert request(server.url, "GET", "/v1/info")[0] == 200
    finally:
        server.close()


def test_time_limit_kills_the_measurement_and_the_agent_recovers(tmp_path, artifact):
    server = start_agent(tmp_path / "cache")
    try:
        client = AgentClient(server.url, TOKEN, retries=0)
        client.measure(artifact, "onnx", SPEC)  # uploads and starts the worker
        old_pid = server.agent.worker._process.pid
        server.agent.config.time_limit_s = 1.0
        long = dict(SMALL, runs=100_000, warmup=0)
        error = assert_error(post_json(server, measure_body(artifact, **long)), 504, "timeout")
        assert "time limit" in error["message"]
        server.agent.config.time_limit_s = 600.0
        response = client.measure(artifact, "onnx", SPEC)
        assert len(response["result"]["decoder_ns"]) == SMALL["runs"]
        assert server.agent.worker._process.pid != old_pid
    finally:
        server.close()


def test_a_crashed_worker_is_an_error_result_then_replaced(tmp_path, artifact):
    server = start_agent(tmp_path / "cache")
    try:
        client = AgentClient(server.url, TOKEN, retries=0)
        client.measure(artifact, "onnx", SPEC)
        pid = server.agent.worker._process.pid
        responses = []
        long = measure_body(artifact, **dict(SMALL, runs=100_000, warmup=0))
        thread = threading.Thread(target=lambda: responses.append(post_json(server, long)))
        thread.start()
        assert wait_until(lambda: server.agent.busy)
        os.kill(pid, signal.SIGKILL)
        thread.join(60)
        assert_error(responses[0], 500, "worker_crashed")
        response = client.measure(artifact, "onnx", SPEC)
        assert len(response["result"]["encoder_ns"]) == SMALL["runs"]
    finally:
        server.close()

