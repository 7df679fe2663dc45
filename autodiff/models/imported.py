"""Training an imported model (torch or ONNX): a loss on its output, and data drawn like its
example inputs.

The loss turns the model's first floating output into a scalar (`model.loss`):
- `cross_entropy` (the default): mean cross-entropy of the output's last axis, read as class
  logits, against integer labels drawn uniformly (an LM's next-token logits, a classifier's);
- `mse`: mean squared error against a standard-normal target of the output's shape;
- `sum`: the sum of the output (no target; a smoke test of the backward pass).
Data: each input is drawn like its example (same shape and dtype; integers uniform in the
example's range, floats standard normal), targets as above, seeded. By default every step
sees one fixed batch with fixed targets, which a few steps can fit, so a falling loss means
the model learns; `fresh=True` draws a new batch each step (random targets cannot be learnt).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from autodiff import numpy as anp
from autodiff.ir import FLOAT_DTYPES, Graph, GraphError
from autodiff.trace import Tensor, Tracer

LOSSES = ("cross_entropy", "mse", "sum")
DEFAULT_LOSS = "cross_entropy"
TARGET = "target"

Feeds = dict[str, np.ndarray]


def model_output(graph: Graph) -> str:
    """The output the loss reads: the first floating one."""
    for name in graph.outputs:
        if graph[name].dtype in FLOAT_DTYPES:
            return name
    raise GraphError(f"{graph.name}: no floating output to put a loss on "
                     f"(outputs: {', '.join(graph.outputs)})")


def with_loss(graph: Graph, loss: str = DEFAULT_LOSS) -> Graph:
    """`graph` plus a target input (for cross_entropy, mse) and a scalar loss, its one output.

    The new nodes are grouped "loss"; the target of cross_entropy carries attrs["high"] (the
    number of classes), as the builders' label inputs do.
    """
    if loss not in LOSSES:
        raise GraphError(f"{graph.name}: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    tracer = Tracer(graph.name, eager=False)
    for node in graph.nodes:
        tracer.nodes.append(node)
        tracer.values[node.name] = None
        tracer._names.add(node.name)
    out = Tensor(tracer, graph[model_output(graph)])
    with tracer.scope(group="loss"):
        if loss == "cross_entropy":
            if not out.shape:
                raise GraphError(f"{graph.name}: cross_entropy needs an output with a class "
                                 f"axis; {out.name!r} is a scalar (use loss: mse or sum)")
            target = tracer.source("input", out.shape[:-1], "int64", TARGET,
                                   attrs={"high": int(out.shape[-1])})
            value = anp.cross_entropy(out, target)
        elif loss == "mse":
            value = anp.apply("mse", out, tracer.source("input", out.shape, out.dtype, TARGET))
        else:
            value = anp.sum(out)
    result = tracer.graph([value], name=graph.name)
    return Graph(result.nodes, result.outputs, graph.name, meta=graph.meta)


def target_spec(graph: Graph):
    """The InputSpec of the loss graph's target input (None for the `sum` loss)."""
    from autodiff.torch_import import InputSpec
    loss = graph[graph.outputs[0]]
    target = next((graph[i] for i in loss.inputs[1:] if graph[i].op == "input"), None)
    if target is None:
        return None
    high = target.attrs.get("high")
    return InputSpec(target.name, target.shape, target.dtype, 0 if high else None, high)


def imported_data(inputs, graph: Graph, seed: int, fresh: bool = False
                  ) -> Callable[[int], Feeds]:
    """step -> feeds for the loss graph's inputs: `inputs` (InputSpecs) and its target."""
    target = target_spec(graph)
    specs = list(inputs) + ([] if target is None else [target])

    def draw(step: int) -> Feeds:
        rng = np.random.default_rng([int(seed), 7, int(step)])
        return {s.name: s.draw(rng) for s in specs}

    fixed = None if fresh else draw(0)

    def feeds(step: int) -> Feeds:
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        if fixed is None:
            return draw(step)
        return {k: v.copy() for k, v in fixed.items()}
    return feeds
