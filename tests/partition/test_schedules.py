"""Pipeline schedules: hand-derived action orders, bubble formulas, validation errors."""
import pytest
from hypothesis import given, settings, strategies as st

from partition.errors import ScheduleError
from partition.schedules import (Action, Schedule, bubble_fraction, gpipe, make_schedule,
                                 one_f_one_b, parse_actions, peak_in_flight, render, sequential,
                                 timeline, validate)


def strings(schedule):
    return [" ".join(str(a) for a in stage) for stage in schedule.actions]


def test_gpipe_and_1f1b_orders_by_hand():
    assert strings(gpipe(2, 2)) == ["0F0 0F1 0B0 0B1", "1F0 1F1 1B0 1B1"]
    assert strings(one_f_one_b(4, 4)) == [
        "0F0 0F1 0F2 0F3 0B0 0B1 0B2 0B3",
        "1F0 1F1 1F2 1B0 1F3 1B1 1B2 1B3",
        "2F0 2F1 2B0 2F2 2B1 2F3 2B2 2B3",
        "3F0 3B0 3F1 3B1 3F2 3B2 3F3 3B3"]
    assert strings(sequential(2, 2)) == ["0F0 0B0 0F1 0B1", "1F0 1B0 1F1 1B1"]


def test_timeline_of_gpipe_by_hand():
    rows = [[str(a) if a else "." for a in row] for row in timeline(gpipe(2, 2))]
    assert rows == [["0F0", "."], ["0F1", "1F0"], [".", "1F1"], [".", "1B0"],
                    ["0B0", "1B1"], ["0B1", "."]]
    text = render(gpipe(2, 2))
    lines = text.splitlines()
    assert lines[1].split() == ["step", "stage0", "stage1"]
    assert lines[2].split() == ["0", "0F0", "."] and len(lines) == 2 + 6


@settings(max_examples=40, deadline=None)
@given(S=st.integers(1, 5), m=st.integers(1, 6), name=st.sampled_from(["gpipe", "1f1b"]))
def test_valid_with_the_textbook_bubble(S, m, name):
    sched = make_schedule(name, S, m)
    validate(sched)
    # Unit-time F and B: both schedules take 2(m + S - 1) steps, bubble (S-1)/(m+S-1).
    assert len(timeline(sched)) == 2 * (m + S - 1)
    assert bubble_fraction(sched) == pytest.approx((S - 1) / (m + S - 1))
    for s, stage in enumerate(sched.actions):
        in_flight = peak = 0
        for a in stage:
            in_flight += 1 if a.kind == "F" else -1
            peak = max(peak, in_flight)
        assert peak == (min(S - s, m) if name == "1f1b" else m)


def test_sequential_has_no_overlap_between_micro_batches():
    sched = sequential(3, 2)
    validate(sched)
    assert len(timeline(sched)) == 2 * 2 * 3          # each micro-batch crosses all stages twice


def test_dag_edges_are_respected():
    # Stage 0 feeds both 1 and 2 directly; 1F0 and 2F0 can run at the same time.
    rows = timeline(gpipe(3, 1), edges=[(0, 1), (0, 2)])
    assert [str(a) if a else "." for a in rows[1]] == [".", "1F0", "2F0"]
    with pytest.raises(ScheduleError, match="outside"):
        timeline(gpipe(2, 1), edges=[(0, 5)])


def test_validation_errors_name_the_action():
    def sched(stages, name="custom"):
        return Schedule(name, len(stages), 2, parse_actions(stages))
    with pytest.raises(ScheduleError, match="0F0 appears twice"):
        validate(sched([["0F0", "0F0", "0B0", "0B1"], ["1F0", "1F1", "1B0", "1B1"]]))
    with pytest.raises(ScheduleError, match="stage 1 never runs 1B1"):
        validate(sched([["0F0", "0F1", "0B0", "0B1"], ["1F0", "1F1", "1B0"]]))
    with pytest.raises(ScheduleError, match="0B1 runs before 0F1"):
        validate(sched([["0F0", "0B1", "0F1", "0B0"], ["1F0", "1F1", "1B0", "1B1"]]))
    with pytest.raises(ScheduleError, match="belongs to stage 1"):
        validate(sched([["1F0", "0F1", "0B0", "0B1"], ["1F0", "1F1", "1B0", "1B1"]]))
    with pytest.raises(ScheduleError, match="deadlock"):
        validate(sched([["0F0", "0B0", "0F1", "0B1"], ["1F1", "1B1", "1F0", "1B0"]]))
    # GPipe's order under the 1F1B name: stage 0 (bound S - 0 = 2) starts a third micro-batch.
    bad = Schedule("1f1b", 2, 4, gpipe(2, 4).actions)
    with pytest.raises(ScheduleError, match="stage 0 holds 3 micro-batches in flight at 0F2"):
        validate(bad)
    with pytest.raises(ScheduleError, match="unknown schedule 'zero-bubble'"):
        make_schedule("zero-bubble", 2, 2)
    with pytest.raises(ScheduleError, match="micro_batches must be a positive integer"):
        gpipe(2, 0)


def test_action_parse_and_dict():
    assert Action.parse("12B3") == Action(12, "B", 3) and str(Action(1, "F", 0)) == "1F0"
    with pytest.raises(ScheduleError, match="expected <stage>"):
        Action.parse("1X0")
    assert gpipe(1, 2).to_dict() == {"name": "gpipe", "num_stages": 1, "micro_batches": 2,
                                     "actions": [["0F0", "0F1", "0B0", "0B1"]]}


def test_peak_in_flight_counts_open_spans_by_hand():
    # [0,2) [1,3) [2,4) [2.5,3): at 2.5 the spans 1, 2 and 3 are open; span 0 ends at 2 when
    # span 2 starts, which is not an overlap
    assert peak_in_flight([(0, 2), (1, 3), (2, 4), (2.5, 3)]) == 3
    assert peak_in_flight([(0, 1), (1, 2), (2, 3)]) == 1
    assert peak_in_flight([]) == 0
