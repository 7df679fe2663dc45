"""Hardening of the Ray executor on a real local Ray: a second actor death while the first is
being recovered, a hung (SIGSTOPped) actor caught by the step timeout, NaN steps stopped or
skipped (and replayed after a fault without a false mismatch), and stale pipe folders of dead
drivers removed. Every run is compared bit for bit with an uninterrupted run."""
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from autodiff.models import BUILDERS, make_data
from executor.optim import Adam
from executor_cases import TINY, contiguous

STEPS = 10


def mlp():
    g = BUILDERS["mlp"](batch=8, dtype="float64", **TINY["mlp"])
    return g, make_data(g, "mlp", 0), contiguous(g, 3)


def executor(g, a, cls=None, **kwargs):
    from executor.ray_executor import RayExecutor
    return (cls or RayExecutor)(g, a, 3, Adam(lr=0.01), **kwargs)


def params_after(g, a, data, steps, skip=(), **kwargs) -> dict:
    """Parameters after training steps 0..steps-1 (minus `skip`) without any fault."""
    with executor(g, a, **kwargs) as ex:
        for s in range(steps):
            if s not in skip:
                ex.step(data(s))
        return ex.params


def dead(pid: int) -> bool:
    """Whether process `pid` is gone (or a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except OSError:
        return True


def kill_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not dead(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def make_double_fault_executor():
    from executor.ray_executor import RayExecutor

    class KillWhileRestoring(RayExecutor):
        """Kills device 0's new actor right after a recovery creates it, before the
        checkpoint is loaded into it: a second fault inside the first recovery."""
        armed = False

        def _spawn(self, pipes):
            super()._spawn(pipes)
            if self.armed:
                self.armed = False
                kill_and_wait(self._where[0][0])
    return KillWhileRestoring


def assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for p, value in expected.items():
        np.testing.assert_array_equal(got[p], value, err_msg=p)


@pytest.mark.parametrize("mode", ["pipes", "plain"])
def test_an_actor_dying_during_recovery_is_recovered_again(ray_session, mode):
    g, data, a = mlp()
    expected = params_after(g, a, data, STEPS, mode=mode)
    cls = make_double_fault_executor()
    with executor(g, a, cls, mode=mode, checkpoint_every=4) as ex:
        results = []
        for s in range(STEPS):
            if s == 6:
                kill_and_wait(ex.actor_pids()[1])
                ex.armed = True
            results.append(ex.step(data(s)))
        assert [r.recoveries for r in results] == [0] * 6 + [2] + [0] * 3
        assert ex.recoveries == 2 and not ex.armed
        assert_same(ex.params, expected)


def test_more_faults_than_max_recoveries_raise_one_clear_error(ray_session):
    from executor.errors import RecoveryError
    g, data, a = mlp()
    cls = make_double_fault_executor()
    with executor(g, a, cls, mode="pipes", checkpoint_every=4, max_recoveries=1) as ex:
        for s in range(3):
            ex.step(data(s))
        kill_and_wait(ex.actor_pids()[1])
        ex.armed = True
        with pytest.raises(RecoveryError, match=r"step 3: gave up after 1 recoveries"):
            ex.step(data(3))
        # the executor is still usable: the next call restores and trains on exactly
        ex.step(data(3))
        ex.step(data(4))
        got = ex.params
    assert_same(got, params_after(g, a, data, 5, mode="pipes"))


@pytest.mark.parametrize("mode", ["pipes", "plain"])
def test_a_hung_actor_is_caught_within_twice_the_step_timeout_and_replaced(ray_session,
                                                                           caplog, mode):
    g, data, a = mlp()
    timeout = 3.0
    expected = params_after(g, a, data, STEPS, mode=mode)
    with executor(g, a, mode=mode, checkpoint_every=4, step_timeout=timeout) as ex:
        results = [ex.step(data(s)) for s in range(5)]
        pid = ex.actor_pids()[1]
        os.kill(pid, signal.SIGSTOP)
        try:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="executor.ray_executor"):
                start = time.time()
                results.append(ex.step(data(5)))
            failed = [r for r in caplog.records if "StepTimeoutError" in r.getMessage()]
            assert failed, [r.getMessage() for r in caplog.records]
            detected = failed[0].created - start
            print(f"{mode}: hung actor detected after {detected:.2f} s "
                  f"(step timeout {timeout:g} s)")
            assert detected <= 2 * timeout
            assert dead(pid)                       # the stopped process was killed
        finally:
            if not dead(pid):
                os.kill(pid, signal.SIGKILL)
        results += [ex.step(data(s)) for s in range(6, STEPS)]
        assert [r.recoveries for r in results] == [0] * 5 + [1] + [0] * 4
        assert pid not in ex.actor_pids()
        assert_same(ex.params, expected)


def nan_at(data, step: int):
    """data(s), with a NaN in the inputs of step `step`."""
    def poisoned(s):
        feeds = dict(data(s))
        if s == step:
            feeds["x"] = np.array(feeds["x"], copy=True)
            feeds["x"][0, 0] = np.nan
        return feeds
    return poisoned


def test_a_nan_step_stops_with_the_parameters_from_before_it(ray_session):
    from executor.errors import NonFiniteError
    g, data, a = mlp()
    assert "x" in data(0)
    bad = nan_at(data, 5)
    with executor(g, a, mode="pipes", checkpoint_every=4) as ex:
        for s in range(5):
            ex.step(bad(s))
        with pytest.raises(NonFiniteError, match=r"^step 5: the loss is nan and the gradient "
                                                 r"of '.*' \(and \d+ more\) is not finite"):
            ex.step(bad(5))
        assert ex.step_count == 5
        got = ex.params
    assert_same(got, params_after(g, a, data, 5, mode="pipes"))


def test_skip_drops_a_nan_step_and_a_fault_after_it_replays_cleanly(ray_session):
    g, data, a = mlp()
    bad = nan_at(data, 5)
    with executor(g, a, mode="pipes", checkpoint_every=4, on_nan="skip") as ex:
        results = []
        for s in range(STEPS):
            if s == 7:                             # replays steps 4..6, skipping 5
                os.kill(ex.actor_pids()[1], signal.SIGKILL)
            results.append(ex.step(bad(s)))
        assert np.isnan(results[5].loss) and sum(r.recoveries for r in results) == 1
        assert np.isfinite([r.loss for i, r in enumerate(results) if i != 5]).all()
        got = ex.params
    assert_same(got, params_after(g, a, data, STEPS, skip={5}, mode="pipes"))


def test_a_fault_after_nan_losses_replays_them_without_a_false_mismatch(ray_session):
    """on_nan=None trains on through NaN; the replay after a fault compares NaN losses as
    equal (NaN != NaN in Python)."""
    g, data, a = mlp()
    bad = nan_at(data, 5)
    with executor(g, a, mode="pipes", checkpoint_every=4, on_nan=None) as ex:
        results = []
        for s in range(8):
            if s == 7:                             # replays steps 4..6: 5 and 6 are NaN
                os.kill(ex.actor_pids()[1], signal.SIGKILL)
            results.append(ex.step(bad(s)))
        assert np.isnan([r.loss for r in results[5:]]).all()
        assert results[7].recoveries == 1


def test_the_next_start_removes_pipe_folders_of_dead_drivers(tmp_path):
    from executor.ray_pipes import make_pipe_dir, pipe_dir_owner, remove_pipe_dir
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)
    assert dead(dead_pid)
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR",
                                                                                  "/tmp"))
    stale = base / f"modelcut-pipes-{dead_pid}-test{os.getpid()}"
    live = base / f"modelcut-pipes-{os.getppid()}-test{os.getpid()}"
    other = base / f"modelcut-pipes-old{os.getpid()}"           # no pid: left alone
    for folder in (stale, live, other):
        folder.mkdir()
        os.mkfifo(folder / "to0")
    try:
        root = make_pipe_dir(["to0"])
        assert pipe_dir_owner(root) == os.getpid()
        assert not stale.exists() and live.exists() and other.exists()
        remove_pipe_dir(root)
    finally:
        for folder in (stale, live, other):
            remove_pipe_dir(folder)
