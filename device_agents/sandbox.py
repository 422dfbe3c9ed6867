"""The agent's sandbox: the profiler's measuring worker plus artifact validation.

Uploaded files are untrusted, so the agent validates them in the same time-limited child
process that times them (`profiler.worker`): a parser that hangs or crashes costs one
error response, not the agent. This module adds the `validate` operation to that worker
and turns the worker's errors into wire errors with the same codes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from device_agents.validate import ValidationError, validate
from device_agents.wire import WireError
from profiler.errors import ErrorCode
from profiler.worker import WorkerError, WorkerHandle

logger = logging.getLogger(__name__)


def validate_op(request: dict[str, Any]) -> None:
    """The worker's `validate` operation: any failure is an `INVALID_ARTIFACT` error."""
    try:
        validate(Path(request["path"]), request["kind"])
    except ValidationError as exc:
        raise WorkerError(ErrorCode.INVALID_ARTIFACT, str(exc)) from None
    except Exception as exc:  # a parser failing on untrusted input is an invalid artifact
        logger.exception("validating %s failed", request["kind"])
        raise WorkerError(ErrorCode.INVALID_ARTIFACT, f"{type(exc).__name__}: {exc}") from None


class AgentWorker(WorkerHandle):
    """A `WorkerHandle` that also validates artifacts and fails with `WireError`s."""

    def __init__(self, config: dict[str, Any], redact: str = "") -> None:
        super().__init__(config, ops={"validate": validate_op}, redact=redact)

    def call(self, request: dict[str, Any], time_limit_s: float | None) -> Any:
        try:
            return super().call(request, time_limit_s)
        except WorkerError as exc:
            raise WireError(exc.code, exc.message) from None
