"""`modelcut train` under faults, as a user meets them: Ctrl-C or SIGTERM in the middle of a
run (one line, a checkpoint, a partial report; --resume then ends bit-identical to an
uninterrupted run), a diverging run (NaN: stopped with the last good checkpoint, or skipped),
strict JSON reports, a --resume with nothing left to train, and --html."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from executor import checkpoint
from modelcut.cli import main

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
       "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in os.environ.get(
           "PYTHONPATH", "").split(os.pathsep) if p])}


def config(folder: Path, name: str, **training) -> Path:
    """configs/mlp.yaml with epsilon 0.2 (see test_train_cli.mlp) and training changes."""
    data = yaml.safe_load(MLP.read_text())
    data["training"].update(training)
    data["partition"]["epsilon"] = max(data["partition"].get("epsilon", 0.1), 0.2)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def strict_report(out: Path) -> dict:
    """report.json parsed by a strict parser: a bare NaN or Infinity fails."""
    def reject(token):
        raise ValueError(f"not strict JSON: {token}")
    return json.loads((out / "report.json").read_text(), parse_constant=reject)


def train_process(*argv, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "modelcut", "train", *map(str, argv)],
                            env=ENV, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def interrupt_after(proc: subprocess.Popen, first: Path, sig: int) -> tuple[str, str]:
    """Send `sig` once checkpoint folder `first` exists (training is under way)."""
    deadline = time.monotonic() + 240
    while not first.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.01)
    proc.send_signal(sig)
    return proc.communicate(timeout=240)


def params_of(folder: Path) -> dict:
    return checkpoint.load(folder)["params"]


def assert_same_params(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name, value in a.items():
        np.testing.assert_array_equal(b[name], value, err_msg=name)


def test_ctrl_c_then_resume_is_bit_identical_to_an_uninterrupted_ray_run(tmp_path):
    pytest.importorskip("ray")
    steps = 600
    path = config(tmp_path, "long", steps=steps, checkpoint_every=50)
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    proc = train_process(path, "--out", stopped, cwd=tmp_path)
    _, err = interrupt_after(proc, stopped / "checkpoints" / "step-000050", signal.SIGINT)
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("modelcut:")]
    assert len(lines) == 1 and "interrupted by SIGINT at step" in lines[0], err[-2000:]
    assert "Traceback" not in err
    report = strict_report(stopped)
    at = report["training"]["stopped"]["step"]
    assert 50 <= at < steps and len(report["loss"]) == at
    assert report["training"]["stopped"]["checkpoint"].endswith(f"step-{at:06d}")
    assert (stopped / "checkpoints" / f"step-{at:06d}" / "checkpoint.json").is_file()

    resumed = subprocess.run([sys.executable, "-m", "modelcut", "train", str(path),
                              "--resume", str(stopped)], env=ENV, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole_run = subprocess.run([sys.executable, "-m", "modelcut", "train", str(path),
                                "--out", str(whole)], env=ENV, cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
    assert whole_run.returncode == 0, whole_run.stderr[-2000:]
    final = f"step-{steps:06d}"
    assert_same_params(params_of(whole / "checkpoints" / final),
                       params_of(stopped / "checkpoints" / final))
    assert strict_report(stopped)["loss"] == strict_report(whole)["loss"]
    assert strict_report(stopped)["training"]["stopped"] is None


def test_sigterm_stops_with_a_checkpoint_and_resume_matches_the_local_run(tmp_path, capsys):
    steps = 1000
    path = config(tmp_path, "term", steps=steps, checkpoint_every=50)
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    proc = train_process(path, "--executor", "local", "--out", stopped, cwd=tmp_path)
    _, err = interrupt_after(proc, stopped / "checkpoints" / "step-000050", signal.SIGTERM)
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("modelcut:")]
    assert len(lines) == 1 and "interrupted by SIGTERM" in lines[0] and "--resume" in lines[0]
    at = strict_report(stopped)["training"]["stopped"]["step"]
    assert 50 <= at < steps
    assert main(["train", str(path), "--executor", "local", "--resume", str(stopped)]) == 0
    assert main(["train", str(path), "--executor", "local", "--out", str(whole)]) == 0
    final = f"step-{steps:06d}"
    assert_same_params(params_of(whole / "checkpoints" / final),
                       params_of(stopped / "checkpoints" / final))


def test_resume_with_nothing_left_to_train_leaves_the_report_alone(tmp_path, capsys):
    path = config(tmp_path, "short", steps=4, checkpoint_every=2)
    out = tmp_path / "run"
    assert main(["train", str(path), "--executor", "local", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", str(path), "--executor", "local", "--resume", str(out)]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert strict_report(out)["measured"]["steps"] == 4


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_diverging_run_stops_on_nan_with_the_last_good_checkpoint(tmp_path, capsys,
                                                                    executor):
    if executor == "ray":
        pytest.importorskip("ray")
    path = config(tmp_path, "diverge", optimizer="sgd", lr=1e6, steps=10, checkpoint_every=1)
    out, good = tmp_path / "run", tmp_path / "good"
    assert main(["train", str(path), "--executor", executor, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("modelcut:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("modelcut: error: step 2: the loss is nan"), lines[0]
    report = strict_report(out)
    assert report["training"]["stopped"]["step"] == 2 and len(report["loss"]) == 2
    assert all(math.isfinite(x) for x in report["loss"])
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    assert last.name == "step-000002"
    assert main(["train", str(path), "--executor", executor, "--steps", "2",
                 "--out", str(good)]) == 0
    expected = params_of(good / "checkpoints" / "step-000002")
    assert all(np.isfinite(v).all() for v in expected.values())
    assert_same_params(expected, params_of(last))


def test_on_nan_skip_drops_the_steps_and_reports_them_as_null(tmp_path, capsys):
    pytest.importorskip("ray")
    path = config(tmp_path, "skip", optimizer="sgd", lr=1e6, steps=5, checkpoint_every=5)
    out = tmp_path / "run"
    assert main(["train", str(path), "--on-nan", "skip", "--out", str(out), "--html"]) == 0
    report = strict_report(out)
    losses = report["loss"]
    assert len(losses) == 5 and losses[2:] == [None, None, None]
    assert all(isinstance(x, float) and math.isfinite(x) for x in losses[:2])
    # every skipped step started from the parameters after step 1: the same loss each time
    params = params_of(out / "checkpoints" / "step-000005")
    assert all(np.isfinite(v).all() for v in params.values())
    text = (out / "report.html").read_text()
    assert '<section id="training">' in text and "Training loss" in text
    assert "report.html" in capsys.readouterr().out


def test_train_lists_every_file_it_wrote_and_says_the_prediction_is_uncalibrated(tmp_path,
                                                                               capsys):
    path = config(tmp_path, "list", steps=3)
    out = tmp_path / "run"
    assert main(["train", str(path), "--executor", "local", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    listed = captured.out.split(f"wrote to {out}:")[1].replace("\n", " ")
    assert {n.strip() for n in listed.split(",")} == {p.name for p in out.iterdir()}
    report = strict_report(out)
    assert report["predicted"]["calibrated"] is False
    ratio = report["measured"]["step_time"] / report["predicted"]["step_time"]
    assert report["agreement"]["step_time_ratio"] == pytest.approx(ratio)
    assert "uncalibrated" in captured.out and f"{ratio:.2f}x" in captured.out
    assert "modelcut calibrate" in captured.err


def test_bad_fault_flags_exit_2_in_one_line(tmp_path, capsys):
    cases = [(("--step-timeout", "0"), "--step-timeout: expected positive seconds, got 0"),
             (("--step-timeout", "nan"), "--step-timeout: expected positive seconds"),
             (("--executor", "local", "--on-nan", "skip"), "--on-nan skip needs --executor ray"),
             (("--address", "http://127.0.0.1:1"), "expected host:port")]
    for flags, message in cases:
        out = tmp_path / "run"
        assert main(["train", str(MLP), *flags, "--out", str(out)]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("modelcut: error:") and message in err, (flags, err)
        assert len(err.strip().splitlines()) == 1 and not out.exists()
