"""Fault tolerance of the Ray executor: an actor's process is killed with SIGKILL during
training; the run restores every device from the driver's checkpoint, replays the lost steps
and ends with exactly the parameters of an uninterrupted run."""
import os
import signal
import threading

import numpy as np
import pytest

from autodiff.models import BUILDERS, make_data
from executor import checkpoint
from executor.optim import Adam, Momentum
from executor_cases import TINY, contiguous, random_assignment

STEPS = 10


def run(ex, data, until, kill_before=None, delay=None):
    """Steps on data(step) until step `until`; before step `kill_before`, SIGKILL device 1's
    actor (after `delay` seconds from a timer thread, i.e. while steps run, when given)."""
    results = []
    while ex.step_count < until:
        s = ex.step_count
        if s == kill_before:
            pid = ex.actor_pids()[1]
            if delay is None:
                os.kill(pid, signal.SIGKILL)
            else:
                threading.Timer(delay, os.kill, (pid, signal.SIGKILL)).start()
        results.append(ex.step(data(s)))
    return results


def test_kill_between_steps_restores_every_actor_and_replays(ray_session, tmp_path):
    from executor.ray_executor import RayExecutor
    g = BUILDERS["gpt"](batch=4, dtype="float64", **TINY["gpt"])
    data = make_data(g, "gpt", 0)
    a = random_assignment(g, 3, seed=1)
    with RayExecutor(g, a, 3, Adam(lr=0.01), mode="plain", checkpoint_every=4,
                     checkpoint_dir=tmp_path / "ckpt") as ex:
        initial = ex.state_dict()
        clean = run(ex, data, 8)
        at_eight = ex.params
        clean += run(ex, data, STEPS)
        expected = ex.params
        ex.load_state_dict(initial)                 # the same run again, with a fault
        before = ex.actor_pids()
        faulty = run(ex, data, STEPS, kill_before=6)
        assert [r.recoveries for r in faulty] == [0] * 6 + [1] + [0] * 3
        assert ex.recoveries == 1
        assert not set(ex.actor_pids()) & set(before)          # every actor was recreated
        assert [r.loss for r in faulty] == [r.loss for r in clean]
        for p, value in expected.items():
            np.testing.assert_array_equal(ex.params[p], value, err_msg=p)
        saved = checkpoint.load(tmp_path / "ckpt")               # the last one: after step 8
        assert saved["step"] == 8
        for p, value in at_eight.items():
            np.testing.assert_array_equal(saved["params"][p], value, err_msg=p)
        # Without checkpoints there is no recovery: the fault reaches the caller.
        ex.checkpoint_every = None
        os.kill(ex.actor_pids()[1], signal.SIGKILL)
        from ray.exceptions import RayActorError

        from executor.ray_executor import ActorRestartedError
        with pytest.raises((RayActorError, ActorRestartedError)):
            ex.step(data(STEPS))


@pytest.mark.parametrize("mode", ["plain", "pipes"])
def test_kill_during_plain_or_piped_steps_gives_the_uninterrupted_parameters(ray_session,
                                                                                 mode):
    from executor.ray_executor import RayExecutor
    g = BUILDERS["mlp"](batch=128, dtype="float64", layers=3, width=384, in_features=64,
                        classes=10)
    data = make_data(g, "mlp", 3)
    a = contiguous(g, 3)
    with RayExecutor(g, a, 3, Momentum(lr=0.05), micro_batches=2, schedule="1f1b",
                     mode=mode, checkpoint_every=3) as ex:
        assert ex.mode == mode
        initial = ex.state_dict()
        clean = run(ex, data, STEPS)
        expected = ex.params
        ex.load_state_dict(initial)
        step_time = float(np.median([r.step_seconds for r in clean]))
        faulty = run(ex, data, STEPS, kill_before=4, delay=step_time / 3)
        assert sum(r.recoveries for r in faulty) == 1 and ex.mode == mode
        assert [r.loss for r in faulty] == [r.loss for r in clean]
        for p, value in expected.items():
            np.testing.assert_array_equal(ex.params[p], value, err_msg=p)
