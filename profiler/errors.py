"""The one family of domain errors; the CLI turns them into a one-line message."""
from __future__ import annotations


class HatprofError(Exception):
    """Bad input or a failed operation that the user can act on."""


class SpaceError(HatprofError):
    """An unknown design space, or an architecture outside its space."""


class DatasetError(HatprofError):
    """An unreadable latency dataset, or rows that must not be mixed."""
