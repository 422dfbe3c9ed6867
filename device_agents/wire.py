"""What the agent and its client agree on: version, error codes, artifact file names, limits.

The protocol itself is documented in `device_agents.agent`. Standard library and
`profiler.workload` (numpy) only: both sides import this module.
"""
from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path
from typing import Any, Mapping

from profiler.errors import DeviceError, ErrorCode
from profiler.protocol import RoundSpec
from profiler.workload import GRAPH_SUFFIX, GRAPHS, MANIFEST_NAME

PROTOCOL_VERSION = 1
PREFIX = f"/v{PROTOCOL_VERSION}"
#: Environment variable holding the shared token (agent and client), when no file is named.
TOKEN_ENV = "HATPROF_AGENT_TOKEN"
DEFAULT_PORT = 8765
#: A token shorter than this is refused: it could be guessed.
MIN_TOKEN_CHARS = 16

#: Stable error codes (`profiler.errors.ErrorCode`, whose values are the strings on the wire,
#: each explained there) and their HTTP statuses. Clients branch on the code, never on the text.
ERROR_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.BAD_JSON: 400,
    ErrorCode.UNKNOWN_FIELD: 400,
    ErrorCode.MISSING_FIELD: 400,
    ErrorCode.INVALID_FIELD: 400,
    ErrorCode.BAD_HASH: 400,
    ErrorCode.BAD_FILENAME: 400,
    ErrorCode.HASH_MISMATCH: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORMAT_NOT_ALLOWED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.MISSING_ARTIFACT: 409,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.LENGTH_REQUIRED: 411,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.INVALID_ARTIFACT: 422,
    ErrorCode.MEASURE_FAILED: 422,
    ErrorCode.INTERNAL: 500,
    ErrorCode.WORKER_CRASHED: 500,
    ErrorCode.BUSY: 503,
    ErrorCode.TIMEOUT: 504,
}
#: Codes worth retrying unchanged after a pause.
RETRYABLE = frozenset({ErrorCode.BUSY, ErrorCode.WORKER_CRASHED})

_SHA256 = re.compile(r"[0-9a-f]{64}")

#: Kind of content of each allowed file name: what the agent validates an upload as.
FILE_KINDS: dict[str, str] = {MANIFEST_NAME: "json"}
FILE_KINDS.update({graph + GRAPH_SUFFIX["onnx"]: "onnx" for graph in GRAPHS})
FILE_KINDS.update({graph + GRAPH_SUFFIX["torchscript"]: "torchscript" for graph in GRAPHS})


def artifact_files(fmt: str) -> tuple[str, ...]:
    """The exact file names an artifact of format `fmt` consists of."""
    return (MANIFEST_NAME, *(graph + GRAPH_SUFFIX[fmt] for graph in GRAPHS))


def read_token(token_file: str | Path | None = None, token_env: str = TOKEN_ENV) -> str:
    """The shared token from `token_file`, else from the environment variable `token_env`."""
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text().strip()
            mode = path.stat().st_mode
        except OSError as exc:
            raise DeviceError(f"cannot read token file {path}: {exc.strerror}") from None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            # As ssh does with private keys: a token others can read is a token others can use.
            raise DeviceError(f"token file {path} is open to other users (mode {stat.S_IMODE(mode):o}): "
                              f"chmod 600 {path}")
        source = f"token file {path}"
    else:
        token = os.environ.get(token_env, "").strip()
        source = f"environment variable {token_env}"
    if not token:
        raise DeviceError(f"no token: {source} is empty or unset")
    if len(token) < MIN_TOKEN_CHARS:
        raise DeviceError(f"the token in {source} is shorter than {MIN_TOKEN_CHARS} characters")
    return token


def is_sha256(value: Any) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


class WireError(Exception):
    """A request refused with one of `ERROR_STATUS`'s codes (raised inside the agent)."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.status = ERROR_STATUS[code]
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": str(self)}
        error.update(self.details)
        return {"error": error}


def _int_field(data: Mapping[str, Any], name: str, lowest: int, highest: int, default: int | None) -> int:
    if name not in data and default is None:
        raise WireError("missing_field", f"field {name!r} is required", field=name)
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise WireError("invalid_field", f"{name} must be an integer in [{lowest}, {highest}]", field=name)
    return value


def check_fields(data: Any, allowed: set[str], what: str, code: str = "bad_json") -> Mapping[str, Any]:
    """`data` as a JSON object holding only `allowed` keys (else `code`, or unknown_field)."""
    if not isinstance(data, dict):
        raise WireError(code, f"{what} must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise WireError("unknown_field", f"unknown field(s) in {what}: {', '.join(unknown)}", fields=unknown)
    return data


#: Upper bounds on a measure request's settings: generous for real use, small enough that a
#: typo cannot occupy a device for days (the agent's time limit still applies).
MEASURE_LIMITS = {"warmup": (0, 10_000), "runs": (1, 100_000), "seq_len": (1, 4096),
                  "beam": (1, 64), "threads": (1, 1024), "canary_every": (0, 100_000)}
#: Half-open ranges [low, high) of the real-valued settings.
_NUMBER_LIMITS = {"trim": (0.0, 0.5), "max_temp_c": (1.0, 150.0), "cooldown_s": (0.0, 3600.0),
                  "slow_canary_ns": (0.0, 1e9)}
#: A measure request is an artifact (and in duet mode a reference artifact) and a `RoundSpec`, field by field.
_MEASURE_FIELDS = {"artifact", "reference", *(f.name for f in dataclasses.fields(RoundSpec))}
_ARTIFACT_FIELDS = {"format", "files"}


def parse_measure(data: Any) -> dict[str, Any]:
    """Validate a measure request body; the settings with defaults filled in."""
    data = check_fields(data, _MEASURE_FIELDS, "measure request")
    if "artifact" not in data:
        raise WireError("missing_field", "field 'artifact' is required", field="artifact")
    fmt, files = _artifact_files(data["artifact"], "artifact")
    reference = None
    if "reference" in data:  # duet mode: the reference model, timed around every run
        reference_fmt, reference = _artifact_files(data["reference"], "reference")
        if reference_fmt != fmt:
            raise WireError("invalid_field", "the reference must have the artifact's format", field="reference")
    defaults = RoundSpec().to_dict()
    spec = {name: _int_field(data, name, lowest, highest, defaults[name])
            for name, (lowest, highest) in MEASURE_LIMITS.items()}
    for name, (lowest, highest) in _NUMBER_LIMITS.items():
        value = data.get(name, defaults[name])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lowest <= value < highest:
            raise WireError("invalid_field", f"{name} must be a number in [{lowest:g}, {highest:g})", field=name)
        spec[name] = float(value)
    settings: dict[str, Any] = {"format": fmt, "files": files, "reference_files": reference, "spec": spec}
    return settings


def _artifact_files(data: Any, what: str) -> tuple[str, dict[str, str]]:
    """The format and files of an artifact named in a measure request, checked."""
    artifact = check_fields(data, _ARTIFACT_FIELDS, what, "invalid_field")
    fmt = artifact.get("format")
    if not isinstance(fmt, str) or fmt not in GRAPH_SUFFIX:
        raise WireError("invalid_field", f"{what} format must be one of {', '.join(GRAPH_SUFFIX)}",
                        field="format")
    files = artifact.get("files")
    if not isinstance(files, dict):
        raise WireError("invalid_field", f"{what} files must map file names to SHA-256 digests", field="files")
    expected = set(artifact_files(fmt))
    if set(files) != expected:
        raise WireError("bad_filename", f"a {fmt} artifact consists of exactly: {', '.join(sorted(expected))}")
    if not all(is_sha256(sha) for sha in files.values()):
        raise WireError("bad_hash", "artifact file digests must be 64 lower-case hex digits")
    return fmt, dict(files)
