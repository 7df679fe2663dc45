"""The plain path's actor calls (executor/ray_calls.py), independent of Ray: every block runs
once in program order, every received tensor comes in a packet of an earlier call, and a
1F1B pipeline is cut as worked out by hand."""
import pytest

from autodiff.models import BUILDERS
from executor.plan import build_plan
from executor.program import transfer_key
from executor.ray_calls import block_calls, plan_calls
from executor_cases import TINY, contiguous, hand_graph, random_assignment


def check_calls(plan, calls) -> None:
    """Each device's calls cover its blocks once, in order; each call's sources are earlier
    calls whose packets for its device hold exactly what its blocks receive."""
    for p in plan.programs:
        mine = [i for c in calls if c.device == p.device for i in c.blocks]
        assert mine == list(range(len(p.blocks)))
    packets = []                    # per call: target -> keys its packet holds
    for n, call in enumerate(calls):
        program = plan.programs[call.device]
        wanted = {transfer_key(program, program.blocks[i], r)
                  for i in call.blocks for r in program.blocks[i].receives}
        brought = set()
        for c, position in call.sources:
            assert c < n
            target = calls[c].targets[position]
            assert target == call.device
            assert packets[c][target] & wanted      # no source brings nothing
            brought |= packets[c][target]
        assert wanted <= brought
        sent = {}
        for i in call.blocks:
            for s in program.blocks[i].sends:
                sent.setdefault(s.target, set()).add(transfer_key(program, program.blocks[i], s))
        assert tuple(sorted(sent)) == call.targets
        packets.append(sent)


@pytest.mark.parametrize("kind,m,schedule", [("random", 2, "gpipe"), ("contiguous", 2, "gpipe"),
                                             ("contiguous", 4, "1f1b"), ("random", 1, "gpipe")])
def test_calls_cover_every_block_and_bring_every_tensor(kind, m, schedule):
    g = hand_graph(batch=2)
    a = random_assignment(g, 3, seed=5) if kind == "random" else contiguous(g, 3)
    plan = build_plan(g, a, 3, micro_batches=m, schedule=schedule)
    for calls in (plan_calls(plan), block_calls(plan)):
        check_calls(plan, calls)
    assert len(block_calls(plan)) == len(plan.order)


def test_a_two_stage_1f1b_pipeline_is_cut_where_a_stage_waits():
    """Worked by hand, round by round, on the tiny mlp cut inside layer 1 (stage 1's SF
    receives a bias from stage 0): stage 0's SF hands the bias to the waiting stage 1 at
    once; stage 0 then runs F0 F1 while stage 1 runs SF; stage 1 runs F0 B0 and stops, since
    stage 0 waits for B0's gradient; from then on each stage runs one backward and the
    forward whose activation arrived; the last calls end with the update."""
    micro = BUILDERS["mlp"](batch=2, dtype="float64", **TINY["mlp"])
    plan = build_plan(micro, contiguous(micro, 2), 2, micro_batches=4, schedule="1f1b")
    assert [s.kind for s in plan.programs[0].blocks[0].sends] == ["param"]
    calls = plan_calls(plan)
    check_calls(plan, calls)
    labels = [(c.device, [plan.programs[c.device].blocks[i].label for i in c.blocks])
              for c in calls]
    assert labels == [(0, ["SF"]), (0, ["F0", "F1"]), (1, ["SF"]), (1, ["F0", "B0"]),
                      (0, ["B0", "F2"]), (1, ["F1", "B1"]), (0, ["B1", "F3"]),
                      (1, ["F2", "B2"]), (0, ["B2"]), (1, ["F3", "B3", "SB", "U"]),
                      (0, ["B3", "SB", "U"])]
    assert len(calls) == 11 < len(plan.order) == 22
