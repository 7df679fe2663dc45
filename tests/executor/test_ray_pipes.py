"""The pipes transport (executor/ray_pipes.py): framing, order, big packets, no deadlock."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from executor.ray_pipes import (SPIN_SECONDS, Endpoint, PipeClosed, default_spin,
                                make_pipe_dir, remove_pipe_dir)


@pytest.fixture
def pair():
    """Two endpoints "a" and "b" joined by a pipe each way."""
    root = make_pipe_dir(["ab", "ba"])
    a = Endpoint({"b": root / "ba"}, {"b": root / "ab"})
    b = Endpoint({"a": root / "ab"}, {"a": root / "ba"})
    yield a, b
    a.close()
    b.close()
    remove_pipe_dir(root)
    assert not root.exists()


def test_messages_keep_their_values_and_order_and_tags_are_kept_apart(pair):
    a, b = pair
    x = np.arange(12.0).reshape(3, 4)
    a.send("b", "t1", {"x": x})
    a.send("b", "t2", "second")
    a.send("b", "t1", [1, 2])
    assert b.receive("a", "t2") == "second"        # a later tag first: earlier ones are kept
    got = b.receive("a", "t1")
    np.testing.assert_array_equal(got["x"], x)
    assert got["x"].flags.writeable
    assert b.receive("a", "t1") == [1, 2]


def test_a_big_packet_arrives_while_its_sender_does_not_touch_the_pipes(pair):
    """16 MiB is many times a pipe's buffer, and nobody reads when it is sent (the receiver
    is busy): the writer thread must finish the write while the sending thread is blocked
    elsewhere (here: until the receiver has the packet)."""
    a, b = pair
    big = np.random.default_rng(0).standard_normal(2 << 20)        # 16 MiB of float64
    received = threading.Event()
    result = {}

    def receiver():
        result["value"] = b.receive("a", "big")
        received.set()

    a.send("b", "big", big)
    t = threading.Thread(target=receiver)
    t.start()
    assert received.wait(timeout=30), "the packet did not arrive while its sender waited"
    t.join()
    np.testing.assert_array_equal(result["value"], big)


def test_two_endpoints_sending_big_packets_to_each_other_do_not_deadlock(pair):
    a, b = pair
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(1 << 20) for _ in range(3)]          # 8 MiB each
    ys = [rng.standard_normal(1 << 20) for _ in range(3)]
    got = {}

    def side(me, peer, mine, key):
        for i, x in enumerate(mine):
            me.send(peer, i, x)
        got[key] = [me.receive(peer, i) for i in range(len(mine))]
        me.flush()

    ta = threading.Thread(target=side, args=(a, "b", xs, "a"))
    tb = threading.Thread(target=side, args=(b, "a", ys, "b"))
    ta.start(), tb.start()
    ta.join(timeout=60), tb.join(timeout=60)
    assert not ta.is_alive() and not tb.is_alive(), "deadlock"
    for x, y in zip(xs, got["b"]):
        np.testing.assert_array_equal(x, y)
    for y, x in zip(ys, got["a"]):
        np.testing.assert_array_equal(x, y)


def test_stop_ends_a_receive_and_alive_may_give_up(pair):
    a, b = pair
    a.send("b", "stop", None)
    with pytest.raises(PipeClosed):
        b.receive("a", "anything")

    class Gone(Exception):
        pass

    def alive():
        raise Gone

    with pytest.raises(Gone):                  # nothing comes: `alive` runs after a second
        b.receive("a", "never", alive)


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.05])
def test_a_spinning_receive_gets_messages_sent_during_and_after_its_spin(pair, delay):
    """spin = 10 ms: a message sent at once, within the spin, or after it (then the receive
    blocks) arrives intact."""
    a, b = pair
    x = np.arange(6.0)
    t = threading.Timer(delay, lambda: a.send("b", "t", x))
    t.start()
    got = b.receive("a", "t", spin=0.01)
    t.join()
    np.testing.assert_array_equal(got, x)


def test_actors_poll_by_default_only_while_they_are_at_most_two_per_cpu():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    assert default_spin(1) == default_spin(2 * cpus) == SPIN_SECONDS > 0
    assert default_spin(2 * cpus + 1) == 0.0


def test_a_run_of_consecutive_sends_goes_as_one_message_per_target():
    """A tiny GPT placed at random on two devices sends tensors back to back: device 0's
    PipeTransport
    writes one message per (run of consecutive Send steps, target), counted here with
    itertools.groupby over the block's steps, and device 1 gets every tensor and arrival
    back by TransferKey, in its own receive order, with the bytes counted per target."""
    import itertools

    from autodiff.models import BUILDERS
    from executor.plan import build_plan
    from executor.program import Send, transfer_key
    from executor.ray_pipes import PipeTransport
    from executor_cases import TINY, random_assignment

    g = BUILDERS["gpt"](batch=2, dtype="float64", **TINY["gpt"])
    plan = build_plan(g, random_assignment(g, 2, 0), 2, micro_batches=2, schedule="gpipe")
    sender, receiver = plan.programs
    runs = [(b, [s for s in group]) for b in sender.blocks
            for is_send, group in itertools.groupby(b.steps, lambda s: isinstance(s, Send))
            if is_send]
    expected = sum(len({s.target for s in steps}) for _, steps in runs)
    assert sum(len(steps) for _, steps in runs) > expected       # some runs hold several
    root = make_pipe_dir(["01", "10"])
    a = Endpoint({1: root / "10"}, {1: root / "01"})      # device 0's pipes, by peer device
    b = Endpoint({0: root / "01"}, {0: root / "10"})
    out = PipeTransport(a, sender, 2)
    out.endpoint.send = counting = _Counting(a.send)
    values = {}
    for n, (block, steps) in enumerate(runs):
        for j, s in enumerate(steps):
            key = transfer_key(sender, block, s)
            values[key] = (np.full(3, float(len(values))), float(n) + j / 10)
            out.send(key, *values[key])
    assert counting.calls == expected
    assert out.sent_bytes.tolist() == [0, 24 * len(values)]
    into = PipeTransport(b, receiver, 2)
    keys = [transfer_key(receiver, blk, r) for blk in receiver.blocks for r in blk.receives]
    assert sorted(keys) == sorted(values)
    for key in keys:
        value, arrival = into.receive(key)
        np.testing.assert_array_equal(value, values[key][0])
        assert arrival == values[key][1]
    a.close()
    b.close()
    remove_pipe_dir(root)


class _Counting:
    """Wraps Endpoint.send, counting the messages."""

    def __init__(self, send):
        self.send, self.calls = send, 0

    def __call__(self, *args):
        self.calls += 1
        self.send(*args)
