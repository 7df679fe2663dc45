"""Exceptions of the partition package; each message names the field, node or device at fault."""
from __future__ import annotations

from autodiff.errors import ModelcutError


class PartitionError(ModelcutError, ValueError):
    """Base class of every error raised by the partition package."""


class ClusterError(PartitionError):
    """A cluster description is malformed; the message names the field."""


class PlacementError(PartitionError):
    """No acceptable placement: bad arguments, a violated pin, or a device over its capacity."""


class ScheduleError(PartitionError):
    """A pipeline schedule is malformed: a missing or repeated action, or a broken dependency."""
