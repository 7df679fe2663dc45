"""Small graphs for the partition tests: hypothesis strategies for random DAGs and builders.

Ops have names the op registry does not know ("f", "g"), so they are opaque: FLOPs come from
the explicit `flops=`, and the backward pass is assumed to keep all their inputs.
"""
import numpy as np
from hypothesis import strategies as st

from autodiff.ir import Graph, Node


@st.composite
def random_dags(draw, max_sources=4, max_ops=10, ints=True):
    """A random DAG of 1..max_sources sources (input/param/const) and up to max_ops ops that
    read 0..3 earlier nodes (duplicates allowed), some int-typed, with random FLOPs."""
    dtypes = ["float32", "float64", "int32"] if ints else ["float32"]
    nodes = []
    for i in range(draw(st.integers(1, max_sources))):
        nodes.append(Node(f"s{i}", draw(st.sampled_from(["input", "param", "const"])), (),
                          (draw(st.integers(0, 5)),), dtype=draw(st.sampled_from(dtypes)),
                          flops=0))
    for j in range(draw(st.integers(0, max_ops))):
        earlier = [nd.name for nd in nodes]
        inputs = tuple(draw(st.lists(st.sampled_from(earlier), min_size=0, max_size=3)))
        nodes.append(Node(f"v{j}", draw(st.sampled_from(["f", "g"])), inputs,
                          (draw(st.integers(0, 5)), 2),
                          dtype=draw(st.sampled_from(["float32", "float32"] + dtypes[2:])),
                          flops=draw(st.integers(0, 50))))
    return Graph(nodes, [nodes[-1].name])


def chain(flops, nbytes=None, param=True, name="chain"):
    """x -> v0 -> v1 -> ... with the given FLOPs per op; v_i's tensor has nbytes[i] bytes
    (float32, nbytes[i] / 4 elements). A param w feeds v0 so every op requires grad."""
    nbytes = nbytes or [400] * len(flops)
    nodes = [Node("x", "input", (), (100,), flops=0)]
    if param:
        nodes.append(Node("w", "param", (), (100,), flops=0))
    previous = "x"
    for i, (f, b) in enumerate(zip(flops, nbytes)):
        inputs = (previous, "w") if (i == 0 and param) else (previous,)
        nodes.append(Node(f"v{i}", "f", inputs, (b // 4,), flops=f))
        previous = f"v{i}"
    return Graph(nodes, [previous], name=name)


def seeded_dag(seed: int) -> Graph:
    """20..60 nodes: an input, 2..5 params, ops reading 1..3 earlier nodes (mostly recent ones,
    params among them), random float32 tensor sizes and FLOPs."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 61))
    params = int(rng.integers(2, 6))
    nodes = [Node("x", "input", (), (int(rng.integers(1, 64)),), flops=0)]
    nodes += [Node(f"w{i}", "param", (), (int(rng.integers(1, 256)),), flops=0)
              for i in range(params)]
    for j in range(n - len(nodes)):
        earlier = len(nodes)
        count = int(rng.integers(1, 4))
        recent = np.clip(earlier - rng.geometric(0.35, size=count), 0, earlier - 1)
        inputs = {nodes[int(i)].name for i in recent}
        if rng.random() < 0.3:
            inputs.add(f"w{int(rng.integers(params))}")
        nodes.append(Node(f"v{j}", "f", tuple(sorted(inputs)), (int(rng.integers(1, 512)),),
                          flops=int(rng.integers(1, 100)) * 1000))
    return Graph(nodes, [nodes[-1].name], name=f"random-{seed}")
