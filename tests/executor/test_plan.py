"""Plans: structure (stages vs segments, partial sums, accumulation, relays), validation, and
bytes per link against SPEC section 2 and partition.metrics."""
import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from executor.errors import PlanError
from executor.plan import build_plan
from executor.program import Accumulate, Compute, Recv, Send, validate_plan
from executor_cases import (contiguous, gradient_shortfall, hand_graph, pass_through_graph,
                            random_assignment, spec_link_bytes, stop_gradient_graph)

import partition.metrics as metrics  # noqa: E402
from partition.cluster import uniform  # noqa: E402


def gradient_sends(plan, device, target):
    return [(b.label, s) for b in plan.programs[device].blocks for s in b.sends
            if s.target == target and s.kind == "gradient"]


def test_plan_is_printable_data():
    g = hand_graph()
    plan = build_plan(g, contiguous(g, 2), 2, micro_batches=2, schedule="1f1b")
    text = str(plan)
    assert "device 0" in text and "device 1" in text and "order:" in text
    assert any(isinstance(s, Send) for b in plan.programs[0].blocks for s in b.steps)
    json.dumps(plan.to_dict())                                 # JSON-able
    validate_plan(plan)


def test_acyclic_placement_runs_as_pipeline_stages():
    g = hand_graph(batch=2)
    m = 3
    plan = build_plan(g, contiguous(g, 3), 3, micro_batches=m, schedule="1f1b")
    assert plan.stages == (0, 1, 2)
    for p in plan.programs:
        labels = [b.label for b in p.blocks]
        assert len(labels) == len(set(labels))                 # one segment per phase
        # The device's F/B blocks follow the 1F1B order of its stage.
        mb_labels = [lab for lab in labels if lab[0] in "FB" and lab[1:].isdigit()]
        warm = min(3 - p.device - 1, m)
        if mb_labels:
            assert mb_labels[:warm + 1] == [f"F{i}" for i in range(warm + 1)]
    # Random placements of this graph have cyclic quotients: a device then runs several
    # segments for one micro-batch.
    a = random_assignment(g, 3, seed=1)
    cyc = build_plan(g, a, 3, micro_batches=1)
    assert cyc.stages is None
    assert any(len([b for b in p.blocks if b.label == "F0"]) > 1 for p in cyc.programs)
    with pytest.raises(PlanError, match="1f1b needs pipeline stages"):
        build_plan(g, a, 3, schedule="1f1b")


def test_fan_out_gradients_travel_as_one_partial_sum():
    g = hand_graph()
    h1 = next(n.name for n in g.nodes if n.op == "tanh" and n.inputs[0].startswith("add"))
    readers = g.consumers(h1)
    assert len(readers) == 3
    a = np.zeros(len(g.nodes), dtype=np.int32)
    for r in readers:                          # h1 on device 0, its three readers on device 1
        a[g.index[r]] = 1
    for name in g.nodes[g.index[readers[-1]] + 1:]:
        a[g.index[name.name]] = 1
    plan = build_plan(g, a, 2)
    sends = [s for _, s in gradient_sends(plan, 1, 0) if s.arrives_as == f"grad({h1})@d1"]
    assert len(sends) == 1
    assert plan.nbytes[sends[0].arrives_as] == g[h1].nbytes


def test_static_gradients_are_summed_over_micro_batches_before_they_travel():
    g = hand_graph(batch=1)
    a = np.zeros(len(g.nodes), dtype=np.int32)
    a[g.index["w"]] = 1                          # w alone on device 1
    m = 4
    plan = build_plan(g, a, 2, micro_batches=m)
    # w travels once per step, tanh(w) runs once per step (SF) and w's gradient, summed over
    # the micro-batches on device 0, comes back once (SB).
    wt = g.consumers("w")[0]
    assert [(b.label, s.tensor) for b in plan.programs[1].blocks for s in b.sends] == [("SF", "w")]
    sends = gradient_sends(plan, 0, 1)
    assert [(label, s.arrives_as) for label, s in sends] == [("SB", "grad(w)@d0")]
    accumulates = [b.label for b in plan.programs[0].blocks for s in b.steps
                   if isinstance(s, Accumulate)]
    assert sorted(set(accumulates)) == [f"B{i}" for i in range(m)]
    computes_wt = [b.label for b in plan.programs[0].blocks for s in b.steps
                   if isinstance(s, Compute) and wt in s.nodes]
    assert computes_wt == ["SF"]


def test_identity_gradient_is_relayed_through_the_node_it_passed():
    g = hand_graph()
    # The residual add h2 = matmul + h1: put the add on device 1, everything else on device 0.
    add = next(n.name for n in g.nodes if n.op == "add" and g[n.inputs[0]].op == "matmul"
               and g[n.inputs[1]].op == "tanh")
    a = np.zeros(len(g.nodes), dtype=np.int32)
    a[g.index[add]] = 1
    plan = build_plan(g, a, 2)
    # The add's gradient goes 0 -> 1, then comes back 1 -> 0 once for each of its two inputs,
    # exactly as SPEC counts it (grad of add, grad of matmul, grad of h1).
    back = sorted(s.arrives_as for _, s in gradient_sends(plan, 1, 0))
    assert back == sorted(f"grad({x})@d1" for x in g[add].inputs)
    np.testing.assert_array_equal(plan.link_bytes(), spec_link_bytes(g, a, 2))


@settings(max_examples=30, deadline=None)
@given(k=st.integers(2, 4), m=st.integers(1, 3), seed=st.integers(0, 10_000),
       kind=st.sampled_from(["random", "contiguous"]),
       build=st.sampled_from([hand_graph, pass_through_graph]))
def test_bytes_per_link_equal_spec_and_partition_metrics(k, m, seed, kind, build):
    g = build(batch=2)
    a = random_assignment(g, k, seed) if kind == "random" else contiguous(g, k)
    plan = build_plan(g, a, k, micro_batches=m)
    expected = spec_link_bytes(g, a, k, m)
    np.testing.assert_array_equal(plan.link_bytes(), expected)
    np.testing.assert_array_equal(
        metrics.compute_metrics(g, a, uniform(k), micro_batches=m).link_traffic, expected)


def test_stop_gradient_reader_is_the_documented_difference():
    g = stop_gradient_graph()
    a = np.zeros(len(g.nodes), dtype=np.int32)
    s = g.by_op("stop_gradient")[0].name
    a[g.index[s]] = 1                            # only the stop_gradient on device 1
    h = g[s].inputs[0]
    plan = build_plan(g, a, 2)
    predicted = metrics.compute_metrics(g, a, uniform(2)).link_traffic
    # SPEC counts h's gradient coming back from device 1; nothing is sent.
    assert predicted[1, 0] - plan.link_bytes()[1, 0] == g[h].nbytes
    np.testing.assert_array_equal(plan.link_bytes(), predicted - gradient_shortfall(g, a, 2))


def test_validation_catches_broken_programs():
    g = hand_graph()
    plan = build_plan(g, contiguous(g, 2), 2)

    def without(device, predicate):
        p = plan.programs[device]
        blocks = tuple(dataclasses.replace(b, steps=tuple(s for s in b.steps if not predicate(s)))
                       for b in p.blocks)
        programs = list(plan.programs)
        programs[device] = dataclasses.replace(p, blocks=blocks)
        return dataclasses.replace(plan, programs=tuple(programs))
    with pytest.raises(PlanError, match="sent 0 and received 1 times|never sends"):
        validate_plan(without(0, lambda s: isinstance(s, Send)))
    with pytest.raises(PlanError, match="neither computes nor receives"):
        validate_plan(without(1, lambda s: isinstance(s, Recv)))
    shuffled = dataclasses.replace(plan, order=tuple(reversed(plan.order)))
    with pytest.raises(PlanError, match="out of turn|before device"):
        validate_plan(shuffled)


def test_bad_arguments_name_the_culprit():
    g = hand_graph()
    n = len(g.nodes)
    with pytest.raises(PlanError, match=f"expected {n} device ids"):
        build_plan(g, np.zeros(n - 1, dtype=np.int32), 2)
    bad = np.zeros(n, dtype=np.int32)
    bad[3] = 5
    with pytest.raises(PlanError, match="node #3 is placed on device 5"):
        build_plan(g, bad, 2)
    with pytest.raises(PlanError, match="micro_batches"):
        build_plan(g, np.zeros(n, dtype=np.int32), 1, micro_batches=0)
    with pytest.raises(Exception, match="unknown schedule 'pipedream'"):
        build_plan(g, np.zeros(n, dtype=np.int32), 1, schedule="pipedream")
