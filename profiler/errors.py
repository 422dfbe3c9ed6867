"""The one family of domain errors, and the error codes of per-architecture results.

Every package raises a `HatprofError` (the CLI turns it into a one-line message and a
non-zero exit); they are defined here, at the bottom, because the app catches them in one
place and one error (`DeviceError`) is raised in several layers.
"""
from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """Why one architecture of a batch has no row: a result's `error`, and the device
    agent's wire codes (the values are the strings on the wire and in reports)."""

    # the batch's own steps
    EXPORT_FAILED = "export_failed"          # the exporter could not build the artifact
    MEASURE_FAILED = "measure_failed"        # the runtime could not run the artifact with these settings
    # the measuring process (local worker or agent)
    INVALID_ARTIFACT = "invalid_artifact"    # refused by validation (not ONNX, external data, bad manifest)
    TIMEOUT = "timeout"                      # exceeded the time limit and was killed
    WORKER_CRASHED = "worker_crashed"        # the measuring process died; it is restarted on the next request
    # the agent's HTTP protocol
    BAD_REQUEST = "bad_request"              # malformed HTTP: request line, headers, Content-Length
    BAD_JSON = "bad_json"                    # body is not one JSON object
    UNKNOWN_FIELD = "unknown_field"          # a field this protocol version does not define
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"          # wrong type or out of range
    BAD_HASH = "bad_hash"                    # not 64 lower-case hex digits
    BAD_FILENAME = "bad_filename"            # not an allowed artifact file name
    HASH_MISMATCH = "hash_mismatch"          # uploaded bytes do not hash to the named SHA-256
    UNAUTHORIZED = "unauthorized"            # missing or wrong token
    FORMAT_NOT_ALLOWED = "format_not_allowed"  # TorchScript on an agent started without --allow-torchscript
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    MISSING_ARTIFACT = "missing_artifact"    # measure names files the agent does not hold: upload, then retry
    REQUEST_TIMEOUT = "request_timeout"      # the body did not arrive in time
    LENGTH_REQUIRED = "length_required"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INTERNAL = "internal"
    BUSY = "busy"                            # another measurement holds the device and the queue is full
    # the collecting side
    UNAVAILABLE = "unavailable"              # no agent of the device answered
    WRITE_FAILED = "write_failed"            # the row could not be written to the dataset

    def __str__(self) -> str:
        return self.value


class HatprofError(Exception):
    """Bad input or a failed operation that the user can act on."""


class SpaceError(HatprofError):
    """An unknown design space, or an architecture outside its space."""


class DatasetError(HatprofError):
    """An unreadable latency dataset, or rows that must not be mixed."""


class ProtocolError(HatprofError):
    """An invalid timing protocol or measurement, or a failure to set up the timed process."""


class ArtifactError(HatprofError):
    """A failed export, or an artifact directory that cannot be read or is out of date."""


class RunnerError(HatprofError):
    """A timed workload that a runner cannot run (bad seq_len, beam or threads)."""


class PredictorError(HatprofError):
    """A latency predictor that cannot be trained, saved, loaded or applied as asked."""


class DeviceError(HatprofError):
    """An unknown device, an unreadable device inventory, or an agent that failed or refused a request."""


class SearchError(HatprofError):
    """An architecture search that cannot proceed, e.g. no candidate meets the latency limit."""
