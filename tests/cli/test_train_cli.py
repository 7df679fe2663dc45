"""`modelcut train` end to end, in process: outputs, measured bytes == predicted V, the loss
going down, determinism, Ray vs local, exact resume, and bad input exiting 2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from autodiff.interpreter import Interpreter
from autodiff.models import BUILDERS, init_params, make_data
from executor import checkpoint
from modelcut.cli import main
from partition.cluster import Cluster
from partition.metrics import compute_metrics

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"
STEPS = 12
PNG = b"\x89PNG\r\n\x1a\n"


def mlp_graph():
    """configs/mlp.yaml's forward graph, built independently of the train command."""
    from modelcut.config import load_config
    name, kwargs = load_config(MLP).model_kwargs()
    return BUILDERS[name](**kwargs)


def train(*argv) -> int:
    return main(["train", *map(str, argv)])


def report_of(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _places() -> bool:
    """Whether configs/mlp.yaml's own partition settings find a placement."""
    from modelcut.training import load_training_setup, place
    from partition.errors import PlacementError
    try:
        place(load_training_setup(MLP))
        return True
    except PlacementError:
        return False


def with_changes(folder: Path, name: str, **training) -> Path:
    """A copy of configs/mlp.yaml with epsilon >= 0.2 (see `mlp`) and some training settings
    changed."""
    data = yaml.safe_load(MLP.read_text())
    data["training"].update(training)
    data["partition"]["epsilon"] = max(data["partition"].get("epsilon", 0.1), 0.2)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    """configs/mlp.yaml. TEMPORARY: it asks for epsilon 0.10, which no placement of its MLP on
    two devices meets (its matmuls weigh 393k, 786k and 786k of 2.13M training FLOPs, so one
    device gets >= 1.18M > 1.1 x 1.065M); until the config is fixed, a copy with epsilon 0.2."""
    return MLP if _places() else with_changes(tmp_path_factory.mktemp("config"), "mlp")


def assignment_of(out: Path, graph, cluster) -> np.ndarray:
    """placement.json (node name -> device name) as device ids aligned with graph.nodes."""
    mapping = json.loads((out / "placement.json").read_text())
    assert set(mapping) == {n.name for n in graph.nodes}
    index = {name: i for i, name in enumerate(cluster.device_names)}
    return np.array([index[mapping[n.name]] for n in graph.nodes], dtype=np.int32)


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory, mlp):
    """Two identical local runs of configs/mlp.yaml."""
    outs = [tmp_path_factory.mktemp("local") / "run" for _ in range(2)]
    for out in outs:
        assert train(mlp, "--executor", "local", "--steps", STEPS, "--out", out) == 0
    return outs


def test_local_run_writes_every_output_and_bytes_equal_V(local_runs):
    out = local_runs[0]
    for name in ("placement.json", "report.json", "report.md", "loss.png", "graph.dot",
                 "load_memory.png", "schedule.png", "traffic.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "loss.png").read_bytes()[:8] == PNG
    report = report_of(out)
    measured, predicted = report["measured"], report["predicted"]
    assert len(report["loss"]) == STEPS and measured["steps"] == STEPS
    assert measured["bytes_per_step"] == predicted["step_volume"] > 0
    assert measured["link_bytes"] == predicted["link_bytes"]
    agreement = report["agreement"]
    assert measured["bytes_constant"] and agreement["bytes_equal"] and agreement["problems"] == []
    assert agreement["step_time_ratio"] == pytest.approx(measured["step_time"]
                                                         / predicted["step_time"])
    # V recomputed from placement.json with the SPEC metric (micro_batches = 1 here)
    graph = mlp_graph()
    cluster = Cluster.from_spec({"uniform": {"devices": 2}})
    metrics = compute_metrics(graph, assignment_of(out, graph, cluster), cluster)
    assert predicted["step_volume"] == metrics.step_volume
    assert predicted["step_time"] > 0 and measured["step_time"] > 0
    # one prediction: the report's simulated step is the step simulator's on the train Plan
    assert report["simulation"]["makespan"] == report["totals"]["makespan"] \
        == predicted["step_time"]
    assert [a["name"] for a in measured["actors"]] == ["dev0", "dev1"]
    assert all(0 <= a["utilisation"] <= 1 for a in measured["actors"])
    text = (out / "report.md").read_text()
    assert "Measured vs predicted" in text and "![loss](loss.png)" in text


def test_losses_match_the_interpreter_and_go_down(local_runs):
    losses = report_of(local_runs[0])["loss"]
    graph = mlp_graph()
    feeds = make_data(graph, "mlp", 0)(0)
    first = Interpreter(graph).run(feeds, init_params(graph, 0)).outputs[graph.outputs[0]]
    assert losses[0] == pytest.approx(float(first), rel=1e-6)
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.02


def test_same_config_and_seed_give_the_same_placement_and_losses(local_runs):
    a, b = local_runs
    assert (a / "placement.json").read_text() == (b / "placement.json").read_text()
    assert report_of(a)["loss"] == report_of(b)["loss"]


def test_ray_executor_gives_the_local_losses_and_bytes(local_runs, tmp_path, mlp):
    out = tmp_path / "ray"
    assert train(mlp, "--executor", "ray", "--steps", 4, "--out", out) == 0
    report = report_of(out)
    assert report["training"]["executor"] == "ray"
    assert report["measured"]["bytes_per_step"] == report["predicted"]["step_volume"]
    assert report["measured"]["link_bytes"] == report["predicted"]["link_bytes"]
    np.testing.assert_allclose(report["loss"], report_of(local_runs[0])["loss"][:4],
                               rtol=1e-6)
    assert (out / "placement.json").read_text() == \
        (local_runs[0] / "placement.json").read_text()


def test_micro_batches_split_the_batch_and_bytes_still_equal_V(local_runs, tmp_path):
    config = with_changes(tmp_path, "mb4", micro_batches=4)
    out = tmp_path / "mb4"
    assert train(config, "--executor", "local", "--steps", 3, "--out", out) == 0
    report = report_of(out)
    assert report["graph"]["nodes"] > 0
    assert report["training"]["micro_batches"] == 4
    assert report["measured"]["bytes_per_step"] == report["predicted"]["step_volume"]
    assert report["predicted"]["micro_batches"] == 4
    # the mean of four micro-batch means is the full-batch mean: same first loss as m = 1
    assert report["loss"][0] == pytest.approx(report_of(local_runs[0])["loss"][0], rel=1e-5)


def final_state(out: Path, step: int) -> dict:
    return checkpoint.load(out / "checkpoints" / f"step-{step:06d}")


def test_resumed_run_ends_with_the_uninterrupted_params(tmp_path, capsys, mlp):
    whole, part, other = tmp_path / "whole", tmp_path / "part", tmp_path / "other"
    common = ("--executor", "local", "--checkpoint-every", 3)
    assert train(mlp, *common, "--steps", 8, "--out", whole) == 0
    assert train(mlp, *common, "--steps", 4, "--out", part) == 0
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["step-000003",
                                                                       "step-000004"]
    assert train(mlp, *common, "--steps", 8, "--resume", part) == 0          # into part
    # from the step-3 checkpoint folder into a new folder
    assert train(mlp, *common, "--steps", 8, "--resume", part / "checkpoints" / "step-000003",
                 "--out", other) == 0
    expected = final_state(whole, 8)
    for out in (part, other):
        state = final_state(out, 8)
        assert state["step"] == 8
        for name, value in expected["params"].items():
            np.testing.assert_array_equal(state["params"][name], value, err_msg=name)
        for name, slots in expected["optimizer"].items():
            for slot, value in slots.items():
                np.testing.assert_array_equal(state["optimizer"][name][slot], value)
        assert report_of(out)["loss"] == report_of(whole)["loss"]
    assert report_of(other)["training"]["first_step"] == 3
    capsys.readouterr()
    # a checkpoint from another setup is refused
    assert train(mlp, *common, "--steps", 9, "--devices", 3, "--resume", whole,
                 "--out", tmp_path / "x") == 2
    assert "different setup" in capsys.readouterr().err


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path, capsys, local_runs, mlp):
    cases = [
        ((tmp_path / "missing.yaml", "--executor", "local"), "missing.yaml"),
        ((with_changes(tmp_path, "mb3", micro_batches=3), "--executor", "local"),
         "training.micro_batches: expected a divisor of model.batch (32), got 3"),
        ((mlp, "--executor", "local", "--algorithm", "nope", "--out", tmp_path / "a"),
         "unknown algorithm 'nope'"),
        ((mlp, "--executor", "local", "--out", local_runs[0]), "--force"),
        ((mlp, "--executor", "local", "--resume", tmp_path, "--out", tmp_path / "b"),
         "no checkpoint found"),
    ]
    for argv, message in cases:
        assert train(*argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("modelcut: error:") and message in err, (argv, err)
        assert "Traceback" not in err


def test_byte_mismatches_name_the_total_each_link_and_changing_steps():
    from modelcut.training import byte_mismatches
    predicted = {"step_volume": 300, "link_bytes": [[0, 100], [200, 0]]}
    agree = {"bytes_per_step": 300, "link_bytes": [[0, 100], [200, 0]], "bytes_constant": True,
             "bytes_per_step_each": [300, 300]}
    assert byte_mismatches(agree, predicted, ["a", "b"]) == []
    differ = {"bytes_per_step": 310, "link_bytes": [[0, 110], [200, 0]],
              "bytes_constant": False, "bytes_per_step_each": [300, 310]}
    problems = byte_mismatches(differ, predicted, ["a", "b"])
    assert len(problems) == 3
    assert "310 bytes per step" in problems[0] and "V = 300" in problems[0]
    assert "link a -> b" in problems[1] and "110" in problems[1] and "100" in problems[1]
    assert "[300, 310]" in problems[2]
