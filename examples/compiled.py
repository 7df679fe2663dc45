"""Helpers shared by the training-loop examples: a compiled `value_and_grad`, optimizer steps.

`ad.value_and_grad` re-traces the function on every call (needed when Python control flow
depends on the data). When the graph does not change between steps it is ~30x faster to
trace once, build the training graph with `ad.vjp`, and run it with the Interpreter.
The optimizers of `executor.optim` update one array at a time; `apply_updates` maps them
over a pytree of parameters.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

import autodiff as ad
from autodiff.interpreter import Interpreter
from autodiff.trace import tree_flatten


class CompiledValueAndGrad:
    """fn(params, *data) -> scalar, traced at example arguments; call it like value_and_grad.

    Gradients mirror `params` (None where a leaf does not reach the loss). Random ops
    (dropout masks, reparameterization noise) draw fresh values for each `step`.
    """

    def __init__(self, fn: Callable, params, *data):
        graph = ad.trace(fn, params, *data)
        self.param_leaves = len(tree_flatten(params)[0])
        inputs = [n.name for n in graph.inputs]
        self.param_names = inputs[:self.param_leaves]
        self.data_names = inputs[self.param_leaves:]
        self.training = ad.vjp(graph, wrt=self.param_names)
        self.grads = self.training.meta["grads"]
        self.loss = self.training.meta["loss"]
        self.interpreter = Interpreter(self.training)

    def __call__(self, params, *data, step: int = 0):
        leaves, rebuild = tree_flatten(params)
        feeds = dict(zip(self.param_names, leaves))
        feeds.update(zip(self.data_names, [x for d in data for x in tree_flatten(d)[0]]))
        out = self.interpreter.run(feeds=feeds, step=step).outputs
        grads = [out[self.grads[n]] if n in self.grads else None for n in self.param_names]
        return float(out[self.loss]), rebuild(grads)


def compile_value_and_grad(fn: Callable, params, *data) -> CompiledValueAndGrad:
    """Trace fn(params, *data) once and return a reusable (params, *data) -> (value, grads)."""
    return CompiledValueAndGrad(fn, params, *data)



def init_states(optimizer, params) -> list[dict]:
    """One optimizer state per leaf of `params`."""
    return [optimizer.init_state(np.asarray(p)) for p in tree_flatten(params)[0]]


def apply_updates(optimizer, params, grads, states: list[dict]):
    """One optimizer step per leaf; a None gradient leaves the leaf and its state unchanged."""
    leaves, rebuild = tree_flatten(params)
    updated = [optimizer.update(p, g, s) for p, g, s in zip(leaves, tree_flatten(grads)[0], states)]
    return rebuild([p for p, _ in updated]), [s for _, s in updated]
