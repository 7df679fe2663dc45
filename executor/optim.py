"""Optimizers as pure per-parameter update rules: SGD, momentum (PyTorch convention), Adam.

An optimizer holds only hyper-parameters; the state of each parameter (velocity, moments,
step count) is a dict of numpy arrays kept by the device that owns the parameter, so it can be
checkpointed as .npz. `update(param, grad, state)` returns the new parameter and state:

- a parameter with no gradient this step (`grad is None`) is skipped: parameter and state
  are returned unchanged (the step count of Adam does not advance);
- a zero gradient is an ordinary update: momentum decays, Adam's moments and step advance.

Weight decay: SGD and momentum add `weight_decay * param` to the gradient (L2, as
`torch.optim.SGD`); Adam applies it decoupled, `param *= 1 - lr * weight_decay` before the
moment update (AdamW, as `torch.optim.AdamW`; with weight_decay=0 it is `torch.optim.Adam`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Mapping, Union

import numpy as np

from executor.errors import OptimizerError

State = dict[str, np.ndarray]


def _check(name: str, **values: float) -> None:
    for key, value in values.items():
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not math.isfinite(value)):
            raise OptimizerError(f"optimizer {name}: {key} must be a finite number, "
                                 f"got {value!r}")
        if value < 0:
            raise OptimizerError(f"optimizer {name}: {key} must be >= 0, got {value!r}")


class _Rule:
    """What every optimizer shares: its numeric hyper-parameters checked (every field but a
    bool), a skipped update without a gradient, and its config as a dict."""

    def __post_init__(self):
        _check(self.name, **{f.name: getattr(self, f.name) for f in fields(self)
                             if f.type != "bool"})

    def update(self, param: np.ndarray, grad: np.ndarray | None, state: State
               ) -> tuple[np.ndarray, State]:
        return (param, state) if grad is None else self._update(param, grad, state)

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class SGD(_Rule):
    """Plain gradient descent: p -= lr * (g + weight_decay * p)."""

    lr: float = 0.01
    weight_decay: float = 0.0
    name: ClassVar[str] = "sgd"
    slots: ClassVar[int] = 0

    def init_state(self, param: np.ndarray) -> State:
        return {}

    def _update(self, param: np.ndarray, grad: np.ndarray, state: State
                ) -> tuple[np.ndarray, State]:
        g = grad + self.weight_decay * param if self.weight_decay else grad
        return param - self.lr * g, state


@dataclass(frozen=True)
class Momentum(_Rule):
    """Heavy-ball momentum in PyTorch's convention: v = mu * v + g; p -= lr * v (nesterov:
    p -= lr * (g + mu * v)). The velocity starts at zero, so the first step is v = g."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    name: ClassVar[str] = "momentum"
    slots: ClassVar[int] = 1

    def init_state(self, param: np.ndarray) -> State:
        return {"velocity": np.zeros_like(param)}

    def _update(self, param: np.ndarray, grad: np.ndarray, state: State
                ) -> tuple[np.ndarray, State]:
        g = grad + self.weight_decay * param if self.weight_decay else grad
        velocity = self.momentum * state["velocity"] + g
        step = g + self.momentum * velocity if self.nesterov else velocity
        return param - self.lr * step, {"velocity": velocity}


@dataclass(frozen=True)
class Adam(_Rule):
    """Adam with decoupled weight decay (AdamW), written as torch.optim.AdamW computes it:
    p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    name: ClassVar[str] = "adam"
    slots: ClassVar[int] = 2

    def __post_init__(self):
        super().__post_init__()
        if self.beta1 >= 1 or self.beta2 >= 1:
            raise OptimizerError(f"optimizer adam: betas must be < 1, got ({self.beta1}, "
                                 f"{self.beta2})")

    def init_state(self, param: np.ndarray) -> State:
        return {"step": np.zeros((), np.int64), "exp_avg": np.zeros_like(param),
                "exp_avg_sq": np.zeros_like(param)}

    def _update(self, param: np.ndarray, grad: np.ndarray, state: State
                ) -> tuple[np.ndarray, State]:
        t = int(state["step"]) + 1
        if self.weight_decay:
            param = param * (1 - self.lr * self.weight_decay)
        exp_avg = self.beta1 * state["exp_avg"] + (1 - self.beta1) * grad
        exp_avg_sq = self.beta2 * state["exp_avg_sq"] + (1 - self.beta2) * (grad * grad)
        bias1 = 1 - self.beta1 ** t
        bias2 = 1 - self.beta2 ** t
        denom = np.sqrt(exp_avg_sq) / math.sqrt(bias2) + self.eps
        param = param - (self.lr / bias1) * (exp_avg / denom)
        return param, {"step": np.asarray(t, np.int64), "exp_avg": exp_avg,
                       "exp_avg_sq": exp_avg_sq}


Optimizer = Union[SGD, Momentum, Adam]
OPTIMIZERS: dict[str, type] = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def make_optimizer(spec: "Optimizer | str | Mapping") -> Optimizer:
    """An optimizer from an instance, a name ("sgd", "momentum", "adam") or a dict
    {"name": ..., hyper-parameters...} (the shape `to_dict()` returns)."""
    if isinstance(spec, tuple(OPTIMIZERS.values())):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise OptimizerError(f"optimizer: expected a name, a dict with 'name' or an optimizer, "
                             f"got {spec!r}")
    hyper = dict(spec)
    name = hyper.pop("name")
    cls = OPTIMIZERS.get(name)
    if cls is None:
        raise OptimizerError(f"optimizer: unknown optimizer {name!r} (expected one of "
                             f"{', '.join(OPTIMIZERS)})")
    try:
        return cls(**hyper)
    except TypeError as e:
        raise OptimizerError(f"optimizer {name}: {e}") from None
