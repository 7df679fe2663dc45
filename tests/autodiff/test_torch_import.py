"""PyTorch import through torch.export on eight architectures built from code (torch_zoo.py):
no opaque ops, the module's unique parameters, one group per module path, partitions at k =
2, 4, 8, five training steps on Ray actors with a falling loss, and gradients equal to
autograd's on the same module and batch (float32 and float64)."""
from __future__ import annotations

import functools
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).parent))
import torch_zoo  # noqa: E402

from autodiff import vjp  # noqa: E402
from autodiff.interpreter import Interpreter  # noqa: E402
from autodiff.models.imported import imported_data, with_loss  # noqa: E402
from autodiff.torch_import import import_torch  # noqa: E402

ARCHS = sorted(torch_zoo.ARCHITECTURES)
F = torch.nn.functional


@functools.lru_cache(maxsize=None)
def imported(arch: str, dtype: str = "float32"):
    """(module, example inputs, ImportedModel), imported once per test session."""
    module, example = torch_zoo.ARCHITECTURES[arch]()
    if dtype == "float64":
        module = module.double()
        example = tuple(e.double() if e.is_floating_point() else e for e in example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module, example, import_torch(module, example)


def torch_loss(module, inputs):
    """Cross-entropy of the output's last axis against the batch's targets (the default)."""
    out = module(*[torch.from_numpy(inputs[name]) for name in inputs if name != "target"])
    out = out[0] if isinstance(out, tuple) else out
    return F.cross_entropy(out.reshape(-1, out.shape[-1]),
                           torch.from_numpy(inputs["target"]).reshape(-1))


@pytest.mark.parametrize("arch", ARCHS)
def test_imports_with_no_opaque_ops_and_the_unique_parameters(arch):
    module, example, im = imported(arch)
    assert im.opaque == ()
    assert im.graph.name == type(module).__name__
    unique = list(module.parameters())           # tied weights once
    assert len(im.graph.params) == len(unique)
    assert im.num_parameters == im.graph.num_parameters() == sum(p.numel() for p in unique)
    names = dict(module.named_parameters())
    for name, value in im.params.items():
        np.testing.assert_array_equal(value, names[name].detach().numpy(), err_msg=name)
    assert [s.name for s in im.inputs] == [n.name for n in im.graph.inputs]


@pytest.mark.parametrize("arch", ARCHS)
def test_one_group_per_module_path(arch):
    module, _, im = imported(arch)
    paths = {name for name, _ in module.named_modules() if name}
    groups = {n.group for n in im.graph.nodes if n.group is not None}
    assert groups <= paths, sorted(groups - paths)
    owners = {name.rsplit(".", 1)[0] for name, _ in module.named_parameters() if "." in name}
    assert owners <= groups
    for p in im.graph.params:
        assert p.group == (p.name.rsplit(".", 1)[0] if "." in p.name else None)
    for n in im.graph.nodes:   # a node's name starts with its module path
        if n.group is not None and not n.is_source:
            assert n.name.startswith(n.group + "."), n.name


def test_gpt2_names_tied_weights_and_nested_no_grad():
    _, _, im = imported("gpt2")
    names = [n.name for n in im.graph.nodes]
    assert any(n.startswith("transformer.h.0.attn.c_attn.") for n in names)
    assert "transformer.wte.weight" in im.params and "lm_head.weight" not in im.params
    # the tied weight feeds both the embedding and the head
    consumers = {im.graph[c].group for c in im.graph.consumers("transformer.wte.weight")}
    assert {"transformer.wte", "lm_head"} <= consumers
    # Llama's rotary table (computed under torch.no_grad() from a buffer) was folded into
    # constants: no cos or sin is left to run each step
    _, _, llama = imported("llama")
    assert not any(n.op in ("cos", "sin") for n in llama.graph.nodes)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_matches_torch(arch):
    module, example, im = imported(arch)
    feeds = {s.name: e.numpy() for s, e in zip(im.inputs, example)}
    out = Interpreter(im.graph).run(feeds, im.params).outputs[im.graph.outputs[0]]
    with torch.no_grad():
        expected = module(*example)
    expected = expected[0] if isinstance(expected, tuple) else expected
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-4, atol=1e-5)


def _gradient_errors(arch: str, dtype: str) -> dict[str, float]:
    """Per parameter: |ours - autograd| / |autograd| (2-norms); a gradient that is zero up to
    rounding (|g| below 1e-4 of the whole gradient's norm, e.g. a key bias under softmax's
    shift invariance) is measured against the whole gradient's norm instead."""
    module, _, im = imported(arch, dtype)
    graph = with_loss(im.graph)
    feeds = imported_data(im.inputs, graph, seed=3)(0)
    train = vjp(graph)
    out = Interpreter(train).run(feeds, im.params).outputs
    module.zero_grad()
    loss = torch_loss(module, feeds)
    loss.backward()
    assert float(out[graph.outputs[0]]) == pytest.approx(loss.item(), rel=1e-5)
    grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    total = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    errors = {}
    for name, expected in grads.items():
        got = out[train.meta["grads"][name]]
        assert got.dtype == expected.dtype
        scale = np.linalg.norm(expected)
        scale = scale if scale > 1e-4 * total else total
        errors[name] = float(np.linalg.norm(got - expected) / scale)
    return errors


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_equal_autograd_float32(arch):
    errors = _gradient_errors(arch, "float32")
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-5, (worst, errors[worst])


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_equal_autograd_float64(arch):
    errors = _gradient_errors(arch, "float64")
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-10, (worst, errors[worst])


@pytest.mark.parametrize("arch", ARCHS)
def test_partitions_at_2_4_8_devices(arch):
    from partition.api import partition
    from partition.cluster import uniform
    graph = with_loss(imported(arch)[2].graph)
    for k in (2, 4, 8):
        placement = partition(graph, uniform(k), seed=0)
        assert placement.assignment.shape == (len(graph),)
        assert set(np.unique(placement.assignment)) <= set(range(k))
        assert len(np.unique(placement.assignment)) > 1


@pytest.fixture(scope="module")
def ray_here():
    """A local Ray for this module (shared/RAY.md settings), stopped only if started here."""
    pytest.importorskip("ray")
    from executor.ray_runtime import start_ray, stop_ray
    started = start_ray(num_cpus=2)
    yield
    if started:
        stop_ray()


@pytest.mark.parametrize("arch", ARCHS)
def test_trains_on_ray_actors_with_falling_loss(arch, ray_here):
    from executor.ray_executor import RayExecutor
    from partition.api import partition
    from partition.cluster import uniform
    im = imported(arch)[2]
    graph = with_loss(im.graph)
    data = imported_data(im.inputs, graph, seed=0)
    placement = partition(graph, uniform(2), seed=0)
    executor = RayExecutor(graph, placement, 2, optimizer={"name": "adam", "lr": 0.01},
                           params=im.params)
    try:
        losses = [executor.step(data(step)).loss for step in range(5)]
    finally:
        executor.shutdown()
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] and min(np.diff(losses)) < 0, losses
