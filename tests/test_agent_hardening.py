"""Issue 12's findings against a running agent: slow clients, smuggling, wrong types, IPv6, tokens."""
from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse

import pytest

from _agent_support import TOKEN, raw, request, start_agent, wait_until
from device_agents.agent import AgentConfig, AgentServer, serve
from device_agents.wire import WireError, artifact_files, parse_measure, read_token
from profiler.errors import DeviceError

SHA = "a" * 64
FILES = {name: SHA for name in ("manifest.json", "encoder.onnx", "cross_kv.onnx", "decoder_step.onnx")}


def _address(server: AgentServer) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(server.url)
    return parsed.hostname, parsed.port


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the agent has closed (or reset) this connection."""
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (BlockingIOError, TimeoutError):
        return False


def test_a_request_head_sent_byte_by_byte_is_cut_off_at_the_deadline(tmp_path):
    """The per-read timeout is long; the whole head still has to arrive within the deadline."""
    server = start_agent(tmp_path / "cache", socket_timeout_s=60, request_timeout_s=1.0)
    try:
        with socket.create_connection(_address(server), timeout=5) as sock:
            sock.settimeout(0.2)
            head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"y" * 200
            sent = 0
            for byte in head:  # one byte every 0.2 s: each read is quick, the whole head is not
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += 1
                if _closed_by_peer(sock):
                    break
            assert sent < len(head), "the agent waited for a 200-byte head sent over 40 s"
        status, _, body = request(server.url, "GET", "/v1/health", token=None)
        assert (status, body["status"]) == (200, "ok")
    finally:
        server.close()


def test_slow_unauthenticated_connections_make_way_for_new_ones(tmp_path):
    """At the connection cap, the oldest connection still sending its head is closed, not the newcomer refused."""
    server = start_agent(tmp_path / "cache", max_connections=2, socket_timeout_s=60, request_timeout_s=60)
    dated = []  # the agent dates a request again when its handler starts it, after accepting the connection

    def mark(connection: socket.socket, trusted: bool, _mark=server.mark) -> None:
        _mark(connection, trusted)
        dated.append(connection)
    server.mark = mark
    try:
        slow = [socket.create_connection(_address(server), timeout=5) for _ in range(2)]
        for sock in slow:
            sock.sendall(b"GET /v1/health HTTP/1.1\r\n")  # and nothing more, no token
        # both slots taken and both requests begun and dated
        assert wait_until(lambda: server._connections._value == 0 and len(dated) == 2
                          and len(server._open) == 2 and None not in server._open.values())
        with server._open_lock:
            oldest_port = min(server._open.items(), key=lambda item: item[1])[0].getpeername()[1]
        status, _, body = request(server.url, "GET", "/v1/health", token=None)
        assert (status, body["status"]) == (200, "ok")
        [oldest] = [sock for sock in slow if sock.getsockname()[1] == oldest_port]
        oldest.settimeout(5)
        assert _closed_by_peer(oldest)  # the oldest slow one was closed to make room
        for sock in slow:
            sock.close()
    finally:
        server.close()


def test_authenticated_requests_in_flight_are_not_evicted(tmp_path):
    """Connections that passed the token check keep their slot: the newcomer gets 503 busy."""
    server = start_agent(tmp_path / "cache", max_connections=1, socket_timeout_s=60, request_timeout_s=60)
    try:
        with socket.create_connection(_address(server), timeout=5) as sock:
            sock.sendall(f"PUT /v1/artifacts/{SHA}/encoder.onnx HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n".encode())
            # the slot is taken and its request passed the token check (before that, it is
            # unauthenticated and may be closed for a newcomer)
            assert wait_until(lambda: server._connections._value == 0 and list(server._open.values()) == [None])
            status, _, body = request(server.url, "GET", "/v1/health", token=None)
            assert (status, body["error"]["code"]) == (503, "busy")
    finally:
        server.close()


def test_an_unread_body_is_drained_within_a_bounded_time(tmp_path):
    """A refused request's body is drained before closing; a trickling client cannot stretch that out."""
    server = start_agent(tmp_path / "cache", socket_timeout_s=60, request_timeout_s=60)
    try:
        with socket.create_connection(_address(server), timeout=5) as sock:
            sock.settimeout(0.2)
            sock.sendall(b"POST /v1/measure HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n")  # no token: 401, then the body is drained
            closed, sent = False, 0
            while sent < 100 and not closed:
                try:
                    sock.sendall(b"x")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                sent += 1
                try:
                    data = sock.recv(65536)
                    closed = data == b"" or (data.startswith(b"HTTP/") and _closed_by_peer(sock))
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                except TimeoutError:
                    pass
            assert closed, "the agent kept draining a body trickling in byte by byte"
    finally:
        server.close()


@pytest.mark.parametrize("lengths", [("5", "500"), ("2", "2")])
def test_repeated_content_length_headers_are_refused(tmp_path, lengths):
    server = start_agent(tmp_path / "cache")
    try:
        head = (f"POST /v1/measure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {lengths[0]}\r\n"
                f"Content-Length: {lengths[1]}\r\n\r\n").encode()
        status, body = raw(server.url, head + b"{}")
        assert status == 400 and body["error"]["code"] == "bad_request"
        assert "Content-Length" in body["error"]["message"]
    finally:
        server.close()


_JSON_VALUES = [[], {}, None, "x", 1.5, True, -1, [1], {"a": 1}]


def _bodies_with_a_wrong_type():
    """Every field of a measure request replaced by every JSON type it must not have."""
    good = {"artifact": {"format": "onnx", "files": dict(FILES)}, "warmup": 1, "runs": 10, "seq_len": 4,
            "beam": 2, "threads": 1, "trim": 0.1}
    for value in _JSON_VALUES:
        for field in ("artifact", "reference"):  # the duet's reference is checked as the artifact is
            yield {**good, field: value}
            yield {**good, field: {"format": value, "files": dict(FILES)}}
            yield {**good, field: {"format": "onnx", "files": value}}
            for name in FILES:
                yield {**good, field: {"format": "onnx", "files": {**FILES, name: value}}}
        for name in ("warmup", "runs", "seq_len", "beam", "threads", "trim", "slow_canary_ns"):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and (name == "trim" and 0 <= value < 0.5 or name == "slow_canary_ns" and value >= 0)):
                yield {**good, name: value}


@pytest.mark.parametrize("body", list(_bodies_with_a_wrong_type()), ids=lambda b: json.dumps(b)[:60])
def test_any_wrong_type_in_any_field_is_a_400(body):
    with pytest.raises(WireError) as refused:
        parse_measure(body)
    assert refused.value.status == 400
    assert refused.value.code in ("invalid_field", "bad_hash", "bad_filename", "unknown_field")


def test_a_duet_reference_is_an_artifact_of_the_same_format_never_a_path():
    good = {"artifact": {"format": "onnx", "files": dict(FILES)}}
    assert parse_measure(good)["reference_files"] is None
    other = {name: "b" * 64 for name in FILES}
    duet = parse_measure({**good, "reference": {"format": "onnx", "files": other}})
    assert duet["reference_files"] == other and duet["files"] == FILES
    with pytest.raises(WireError, match="the artifact's format") as refused:
        parse_measure({**good, "reference": {"format": "torchscript",
                                             "files": {name: "b" * 64 for name in artifact_files("torchscript")}}})
    assert refused.value.code == "invalid_field"
    for path_field in ("reference_dir", "dir"):  # what the agent's worker reads is the agent's own to set
        with pytest.raises(WireError) as refused:
            parse_measure({**good, path_field: "/etc"})
        assert refused.value.code == "unknown_field"


def test_the_slow_host_limit_travels_as_a_number_of_the_round_spec():
    good = {"artifact": {"format": "onnx", "files": dict(FILES)}}
    assert parse_measure({**good, "slow_canary_ns": 125_000})["spec"]["slow_canary_ns"] == 125_000.0
    assert parse_measure(good)["spec"]["slow_canary_ns"] == 0.0  # no wait unless asked


def test_the_reported_format_list_crash_is_invalid_field(tmp_path):
    server = start_agent(tmp_path / "cache")
    try:
        for artifact in ({"format": [], "files": {}}, {"format": {}, "files": {}}, {"format": "onnx", "files": 3}):
            status, _, body = request(server.url, "POST", "/v1/measure",
                                      json.dumps({"artifact": artifact}).encode(),
                                      {"Content-Type": "application/json"})
            assert (status, body["error"]["code"]) == (400, "invalid_field"), body
    finally:
        server.close()


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_the_agent_serves_on_ipv6_loopback_without_a_warning(tmp_path, caplog):
    config = AgentConfig(token=TOKEN, cache_dir=tmp_path / "cache")
    with caplog.at_level("WARNING", logger="device_agents.agent"):
        server = serve(config, "::1", 0)
    assert not [r for r in caplog.records if "unencrypted" in r.getMessage()]
    server.start()
    try:
        assert server.url.startswith("http://[::1]:")
        port = urllib.parse.urlsplit(server.url).port
        conn = http.client.HTTPConnection("::1", port, timeout=30)
        try:
            conn.request("GET", "/v1/health")
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["status"] == "ok"
        finally:
            conn.close()
    finally:
        server.close()


def test_a_non_loopback_address_is_warned_about(tmp_path, caplog):
    config = AgentConfig(token=TOKEN, cache_dir=tmp_path / "cache")
    with caplog.at_level("WARNING", logger="device_agents.agent"):
        server = serve(config, "0.0.0.0", 0)
    server.server_close()
    server.agent.close()
    assert [r for r in caplog.records if "unencrypted" in r.getMessage()]


@pytest.mark.parametrize("mode", [0o666, 0o640, 0o604, 0o620, 0o602])
def test_a_token_file_open_to_other_users_is_refused(tmp_path, mode):
    path = tmp_path / "agent.token"
    path.write_text(TOKEN)
    path.chmod(mode)
    with pytest.raises(DeviceError, match="chmod 600"):
        read_token(path)
    path.chmod(0o600)
    assert read_token(path) == TOKEN
    path.chmod(0o400)
    assert read_token(path) == TOKEN


def test_clients_still_connect_after_slow_ones_were_cut_off(tmp_path):
    """Slow clients that keep coming back never hold /v1/health at 503."""
    server = start_agent(tmp_path / "cache", max_connections=3, socket_timeout_s=60, request_timeout_s=60)
    try:
        slow = []
        statuses = []
        for _ in range(6):  # more slow connections than the cap, interleaved with real requests
            sock = socket.create_connection(_address(server), timeout=5)
            sock.sendall(b"G")
            slow.append(sock)
            time.sleep(0.05)  # the agent accepts them in order: "oldest" is well defined
            statuses.append(request(server.url, "GET", "/v1/health", token=None)[0])
        assert statuses == [200] * 6
        for sock in slow:
            sock.close()
    finally:
        server.close()
