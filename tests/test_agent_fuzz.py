"""A few hundred seeded malformed requests: each gets a 4xx JSON error, then a valid one succeeds."""
from __future__ import annotations

import hashlib
import json
import random

import pytest

from _agent_support import SMALL, SPEC, TOKEN, raw, start_agent
from device_agents.client import AgentClient
from device_agents.wire import ERROR_STATUS, FILE_KINDS

N_REQUESTS = 300
_BAD_VALUES = [-1, 0, "x", None, 1e300, [], {}, True, 10 ** 20, 0.5, "NaN", [1, 2], {"a": 1}, ""]
_PATHS = ["/v1/measure", "/v1/info", "/v1/health", "/v1/artifacts/{sha}/{name}", "/v1/artifacts/{sha}",
          "/v1/artifacts//{name}", "/", "/v1", "/v2/measure", "/v1/measure?x=1", "/v1/info?threads=-3",
          "/v1/info?threads=1&threads=2", "/v1/../v1/info", "//v1/info", "/v1/artifacts/{sha}/{name}/x"]


def _valid_body(artifact) -> dict:
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in artifact.iterdir() if not p.name.startswith(".")}
    return {"artifact": {"format": "onnx", "files": files}, **SMALL}


def _mutated_json(rng: random.Random, valid: dict) -> bytes:
    body = json.loads(json.dumps(valid))
    choice = rng.randrange(7)
    if choice == 0:
        del body[rng.choice(sorted(body))]
        body.setdefault("runs", rng.choice(_BAD_VALUES[:3]))  # keep it invalid even if 'artifact' stays
    elif choice == 1:
        body[rng.choice(["evil", "path", "file", "__proto__", "cmd"])] = rng.choice(_BAD_VALUES)
    elif choice == 2:
        body[rng.choice(["runs", "warmup", "seq_len", "beam", "threads", "trim"])] = rng.choice(_BAD_VALUES)
    elif choice == 3:
        files = body["artifact"]["files"]
        name = rng.choice(sorted(files))
        files[rng.choice(["../" + name, name.upper(), "/etc/passwd", name + "\x00"])] = files.pop(name)
    elif choice == 4 and rng.random() < 0.5:
        files = body["artifact"]["files"]  # well-formed, but names files the agent does not hold
        files[rng.choice(sorted(files))] = hashlib.sha256(str(rng.random()).encode()).hexdigest()
    elif choice == 4:
        body["artifact"] = rng.choice(_BAD_VALUES + [{"format": "onnx"}, {"files": {}}])
    elif choice == 5:
        text = json.dumps(body).encode()
        return text[:rng.randrange(len(text))]
    else:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    return json.dumps(body).encode()


def _request(rng: random.Random, valid: dict) -> bytes:
    sha = hashlib.sha256(str(rng.random()).encode()).hexdigest()
    name = rng.choice(sorted(FILE_KINDS) + ["x.onnx", "..", "%2e%2e%2fx"])
    kind = rng.random()
    if kind < 0.35:
        method, path = "POST", "/v1/measure"
    elif kind < 0.55:
        method, path = "PUT", f"/v1/artifacts/{sha}/{name}"
    else:
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW", "G\x00T"])
        path = rng.choice(_PATHS).format(sha=rng.choice([sha, sha[:10], "Z" * 64]), name=name)
    if method == "GET" and path in ("/v1/health", "/v1/info"):
        path += "?x=1"  # the endpoints that would succeed
    if kind > 0.9:
        return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 100))) + b"\r\n\r\n"
    headers = {"Host": "127.0.0.1"}
    auth = rng.random()
    if auth < 0.75:
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif auth < 0.9:
        headers["Authorization"] = rng.choice(["Bearer", "Bearer x", f"Basic {TOKEN}", "\x7f" * 10])
    body = b""
    if method in ("POST", "PUT", "PATCH") or rng.random() < 0.1:
        if "artifacts" in path and rng.random() < 0.5:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
            if rng.random() < 0.5 and "/" + sha + "/" in path:
                body = body or b"x"
                path = path.replace(sha, hashlib.sha256(body).hexdigest())  # hash matches: validation refuses
        else:
            body = _mutated_json(rng, valid)
            headers["Content-Type"] = rng.choice(["application/json"] * 3 + ["text/plain"])
        length = len(body)
        headers["Content-Length"] = str(rng.choice([length] * 6 + [length + 50, -1, "abc", 10 ** 12]))
    if rng.random() < 0.05:
        headers["Transfer-Encoding"] = "chunked"
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1", "replace") + b"\r\n" + body


def test_malformed_requests_get_4xx_json_and_the_agent_keeps_serving(tmp_path, artifact):
    server = start_agent(tmp_path / "cache", socket_timeout_s=2, max_upload_bytes=8 << 20)
    rng = random.Random(20240611)
    valid = _valid_body(artifact)
    statuses: dict[int, int] = {}
    try:
        for i in range(N_REQUESTS):
            data = _request(rng, valid)
            status, body = raw(server.url, data)
            assert status is not None and 400 <= status < 500, (i, data[:200], status, body)
            if data.startswith(b"HEAD "):
                assert body is None  # a HEAD response has no body
            else:
                assert body["error"]["code"] in ERROR_STATUS, (i, data[:200], body)
                assert ERROR_STATUS[body["error"]["code"]] == status or status in (400, 414, 431)
            statuses[status] = statuses.get(status, 0) + 1
        # the fuzz reached deep: authentication, parsing, validation and the artifact store
        assert {400, 401, 404, 405, 409, 422} <= set(statuses), statuses
        response = AgentClient(server.url, TOKEN, retries=0).measure(artifact, "onnx", SPEC)
        assert len(response["result"]["encoder_ns"]) == SMALL["runs"]
    finally:
        server.close()
