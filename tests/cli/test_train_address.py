"""`modelcut train --address` joins a running Ray cluster: a real head started with
`ray start --head`, the training run in its own process (a process joins one Ray instance)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from modelcut.cli import main

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"
RAY = Path(sys.executable).parent / "ray"
STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A one-machine Ray cluster in its own process group, killed as a group afterwards."""
    if not RAY.exists():
        pytest.skip("the `ray` command is not installed next to this Python")
    port = free_port()
    # Short path: Ray's Unix sockets live under it (limit ~107 characters).
    temp = tempfile.mkdtemp(prefix="mc-head-")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={temp}", "--block"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        for line in head.stdout:
            if "block forever" in line:
                break
            if time.monotonic() > deadline:
                pytest.fail("ray start --head did not come up within 90 s")
        else:
            pytest.fail(f"ray start --head exited with status {head.wait()}")
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_train_joins_a_running_cluster_and_matches_the_local_run(ray_head, tmp_path):
    joined, local = tmp_path / "joined", tmp_path / "local"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run(
        [sys.executable, "-m", "modelcut", "train", str(MLP), "--executor", "ray",
         "--address", ray_head, "--steps", str(STEPS), "--out", str(joined)],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((joined / "report.json").read_text())
    assert report["training"]["address"] == ray_head
    assert report["measured"]["bytes_per_step"] == report["predicted"]["step_volume"]

    # The same config trained by the local reference executor gives the same losses.
    assert main(["train", str(MLP), "--executor", "local", "--steps", str(STEPS),
                 "--out", str(local)]) == 0
    expected = json.loads((local / "report.json").read_text())["loss"]
    assert report["loss"] == pytest.approx(expected, rel=0, abs=1e-9)
    assert json.loads((joined / "placement.json").read_text()) == \
        json.loads((local / "placement.json").read_text())


def run_train(*argv, cwd: Path, timeout: float = 90) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "modelcut", "train", str(MLP), *map(str, argv)],
                         env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    return run, time.monotonic() - start


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("modelcut:")]
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("modelcut: error: --address"), lines[0]
    return lines[0]


def test_an_unreachable_head_fails_within_30_s_in_one_line_and_writes_nothing(tmp_path):
    port = free_port()                      # bound once, then closed: nobody listens there
    out = tmp_path / "run"
    run, seconds = run_train("--address", f"127.0.0.1:{port}", "--steps", 2, "--out", out,
                             cwd=tmp_path)
    assert run.returncode == 2 and seconds <= 30, (seconds, run.stderr[-2000:])
    assert "cannot reach a Ray head" in one_error_line(run.stderr)
    assert not out.exists()


def test_ray_client_without_its_extra_fails_in_one_line_naming_the_extra(tmp_path):
    try:
        import grpc  # noqa: F401
        pytest.skip("Ray Client's packages are installed: the `client` extra is present")
    except ImportError:
        pass
    out = tmp_path / "run"
    run, _ = run_train("--address", "ray://127.0.0.1:10001", "--steps", 2, "--out", out,
                       cwd=tmp_path)
    assert run.returncode == 2
    assert "`client` extra" in one_error_line(run.stderr)
    assert not out.exists()
