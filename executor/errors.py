"""Exceptions of the executor package; each message names the device, node or field at fault."""
from __future__ import annotations

from autodiff.errors import ModelcutError
from partition.errors import ScheduleError  # noqa: F401  (schedules live in partition)


class ExecutorError(ModelcutError, ValueError):
    """Base class of every error raised by the executor package."""


class PlanError(ExecutorError):
    """A training graph and placement cannot be turned into consistent per-device programs."""


class OptimizerError(ExecutorError):
    """An unknown optimizer or a bad hyper-parameter."""


class CheckpointError(ExecutorError):
    """A checkpoint directory is missing a file or does not match the executor it is loaded into."""


class StepTimeoutError(ExecutorError):
    """A step (or a restore) took longer than the step timeout: some actor hangs."""


class NonFiniteError(ExecutorError):
    """A step produced a NaN or infinite loss or gradient."""


class RecoveryError(ExecutorError):
    """A step kept failing with lost actors after `max_recoveries` restores."""
