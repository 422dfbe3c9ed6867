"""The one family of domain errors; the CLI turns them into a one-line message."""
from __future__ import annotations


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
