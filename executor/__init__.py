"""executor: runs a placed training graph.

`build_plan` turns the training graph and a placement into one Program per device (data:
receives, fused computes, accumulations, sends, the optimizer update); `LocalExecutor` runs
the programs in one process counting bytes per link; each device's state lives in a
`DeviceWorker`, which the Ray executor wraps in one actor per device.
"""
from executor.errors import (CheckpointError, ExecutorError, OptimizerError, PlanError,
                             ScheduleError)
from executor.local import LocalExecutor, StepResult, split_feeds
from executor.optim import SGD, Adam, Momentum, make_optimizer
from executor.plan import as_assignment, build_plan
from executor.program import Plan, Program, validate_plan
from partition.schedules import Action, Schedule, make_schedule
from executor.worker import DeviceWorker

__all__ = [
    "Action", "Adam", "CheckpointError", "DeviceWorker", "ExecutorError", "LocalExecutor",
    "Momentum", "OptimizerError", "Plan", "PlanError", "Program", "SGD", "Schedule",
    "ScheduleError", "StepResult", "as_assignment", "build_plan", "make_optimizer",
    "make_schedule", "split_feeds", "validate_plan",
]
