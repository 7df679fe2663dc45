"""`--shard auto` end to end: partition writes the rewritten graph that placement.json names
and a Sharding table; compare rows carry the scheme; train on Ray runs the sharded graph with
the unsharded model's split params: its losses equal the unsharded local run's (float32,
1e-6 relative) and its measured bytes equal the sharded graph's V."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from autodiff.io import load_graph
from modelcut.cli import main
from partition.cluster import Cluster
from partition.metrics import compute_metrics

CONFIG = {
    "name": "tiny-bigvocab", "seed": 0,
    "model": {"builder": "gpt", "layers": 1, "d_model": 16, "heads": 2, "seq": 8,
              "vocab": 2048, "batch": 4, "tied": False},
    # slow devices: compute dominates, so splitting the LM head pays off
    "cluster": {"uniform": {"devices": 4, "flops": "100 MFLOPS", "memory": "1GiB",
                            "bandwidth": "25GB/s", "latency": "10us"}},
    "partition": {"algorithm": "pipeline_dp", "objective": "throughput", "shard": "auto"},
    "training": {"steps": 3, "optimizer": "sgd", "lr": 0.1, "micro_batches": 1,
                 "schedule": "1f1b"},
}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny-bigvocab.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def placed(out: Path, cluster: Cluster):
    """The graph in graph.json.gz and placement.json as device ids aligned with its nodes."""
    graph = load_graph(out / "graph.json.gz")
    mapping = json.loads((out / "placement.json").read_text())
    assert set(mapping) == {n.name for n in graph.nodes}
    index = {d: i for i, d in enumerate(cluster.device_names)}
    return graph, np.array([index[mapping[n.name]] for n in graph.nodes], dtype=np.int32)


def test_partition_writes_the_sharded_graph_and_reports_it(config, tmp_path):
    from modelcut.config import load_config
    out = tmp_path / "auto"
    assert main(["partition", str(config), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    sharding = report["sharding"]
    assert sharding["kept"] and {n["op"] for n in sharding["nodes"]} == {"matmul",
                                                                        "cross_entropy"}
    cluster = Cluster.from_spec(load_config(config).cluster_spec())
    graph, a = placed(out, cluster)
    assert any(".shard" in n.name for n in graph.nodes)
    metrics = compute_metrics(graph, a, cluster)
    assert report["totals"]["step_volume"] == metrics.step_volume
    assert len(set(a.tolist())) == cluster.k         # every device holds work
    md = (out / "report.md").read_text()
    assert "Sharding" in md and sharding["nodes"][0]["name"] in md
    off = tmp_path / "off"
    assert main(["partition", str(config), "--shard", "off", "--out", str(off)]) == 0
    report_off = json.loads((off / "report.json").read_text())
    assert report_off["sharding"] is None and not (off / "graph.json.gz").exists()
    assert sharding["bytes_added"] == metrics.step_volume - report_off["totals"]["step_volume"]
    assert report["totals"]["time_per_micro_batch"] < report_off["totals"]["time_per_micro_batch"]


def test_compare_rows_carry_the_scheme(config, tmp_path):
    rows_file = tmp_path / "rows.json"
    assert main(["compare", str(config), "--only", "pipeline_dp,contiguous",
                 "--json", str(rows_file)]) == 0
    rows = json.loads(rows_file.read_text())
    assert [r["algorithm"] for r in rows] == ["pipeline_dp", "contiguous"]
    assert all(r["sharding"] is not None for r in rows)


def test_bad_shard_value_in_the_config_names_the_field(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "partition": {"shard": "sometimes"}}))
    assert main(["partition", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "shard" in err and "auto, off" in err


def test_train_on_ray_with_shard_auto_matches_the_unsharded_local_run(config, tmp_path):
    auto, off = tmp_path / "auto", tmp_path / "off"
    # the target: float32 losses within 1e-6 relative over 20 steps
    assert main(["train", str(config), "--executor", "ray", "--steps", "20",
                 "--out", str(auto)]) == 0
    assert main(["train", str(config), "--executor", "local", "--shard", "off", "--steps", "20",
                 "--out", str(off)]) == 0
    ra, ro = (json.loads((p / "report.json").read_text()) for p in (auto, off))
    assert ra["sharding"]["kept"] and ro["sharding"] is None
    assert len(ra["loss"]) == len(ro["loss"]) == 20
    np.testing.assert_allclose(ra["loss"], ro["loss"], rtol=1e-6)
    from modelcut.config import load_config
    cluster = Cluster.from_spec(load_config(config).cluster_spec())
    graph, a = placed(auto, cluster)
    v = compute_metrics(graph, a, cluster).step_volume
    assert ra["measured"]["bytes_per_step"] == ra["predicted"]["step_volume"] == v > 0


def test_a_sharded_run_resumes_exactly(config, tmp_path):
    whole, first = tmp_path / "whole", tmp_path / "first"
    common = ("--executor", "local", "--checkpoint-every", "1")
    assert main(["train", str(config), *common, "--out", str(whole)]) == 0
    assert main(["train", str(config), *common, "--steps", "2", "--out", str(first)]) == 0
    assert main(["train", str(config), *common, "--resume", str(first), "--force"]) == 0
    losses = json.loads((whole / "report.json").read_text())["loss"]
    resumed = json.loads((first / "report.json").read_text())["loss"]
    assert len(losses) == 3 and resumed == losses
