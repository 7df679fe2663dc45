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
