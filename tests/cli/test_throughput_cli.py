"""`--objective throughput`, `--micro-batches`, `--schedule` and the pipeline figures in every
report: SPEC section 5's time per micro-batch recomputed from placement.json, the bottleneck
device, the schedule's bubble, and "not a pipeline" with a hint for a cyclic placement."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from autodiff.io import save_graph
from modelcut.cli import main
from modelcut.config import load_config
from partition.cluster import Cluster
from partition.stage_time import stage_times
from tests.partition.dags import seeded_dag

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _assignment(out: Path, graph, cluster) -> np.ndarray:
    mapping = json.loads((out / "placement.json").read_text())
    index = {d: i for i, d in enumerate(cluster.device_names)}
    return np.array([index[mapping[n.name]] for n in graph.nodes], dtype=np.int32)


def test_partition_throughput_reports_the_pipeline(tmp_path, capsys):
    config = CONFIGS / "gpt-small.yaml"
    out = tmp_path / "out"
    assert main(["partition", str(config), "--devices", "4", "--objective", "throughput",
                 "--micro-batches", "4", "--schedule", "gpipe", "--algorithm", "pipeline_dp",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    cfg = load_config(config)
    graph = cfg.forward_graph()
    cluster = Cluster.from_spec(cfg.cluster_spec()).resized(4)
    st = stage_times(graph, _assignment(out, graph, cluster), cluster, micro_batches=4,
                     schedule="gpipe")
    totals = json.loads((out / "report.json").read_text())["totals"]
    assert totals["pipeline"] is True and st.acyclic
    assert totals["time_per_micro_batch"] == st.time_per_micro_batch
    assert totals["bottleneck_device"] == cluster.device_names[st.bottleneck]
    assert totals["pipeline_bubble"] == (st.used - 1) / (4 + st.used - 1)
    assert totals["micro_batches"] == 4 and totals["pipeline_schedule"] == "gpipe"
    assert "pipeline time per micro-batch" in printed and "schedule bubble (gpipe, m=4)" \
        in printed
    assert "pipeline time per micro-batch" in (out / "report.md").read_text()
    assert "not a pipeline" not in printed


def test_cyclic_placement_is_not_a_pipeline_and_hints(tmp_path, capsys):
    graph = seeded_dag(4)
    path = tmp_path / "g.json"
    save_graph(graph, path)
    out = tmp_path / "out"
    assert main(["partition", "--graph", str(path), "--devices", "3", "--algorithm",
                 "round_robin", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    totals = json.loads((out / "report.json").read_text())["totals"]
    assert totals["pipeline"] is False and totals["time_per_micro_batch"] is None
    assert totals["bottleneck_device"] is None and totals["pipeline_bubble"] is None
    assert "not a pipeline" in printed
    assert "hint:" in printed and "--acyclic" in printed and "--objective throughput" in printed
    assert "not a pipeline" in (out / "report.md").read_text()


def test_compare_shows_volume_and_time_per_micro_batch(tmp_path, capsys):
    rows_file = tmp_path / "rows.json"
    assert main(["compare", str(CONFIGS / "mlp.yaml"), "--devices", "2", "--objective",
                 "throughput", "--only", "pipeline_dp,contiguous,round_robin",
                 "--json", str(rows_file)]) == 0
    printed = capsys.readouterr().out
    rows = {r["algorithm"]: r for r in json.loads(rows_file.read_text())}
    assert "time/micro-batch" in printed
    dp, contiguous = rows["pipeline_dp"]["pipeline"], rows["contiguous"]["pipeline"]
    assert dp["acyclic"] and dp["time_per_micro_batch"] <= contiguous["time_per_micro_batch"]


def test_old_objective_name_is_still_accepted(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["partition", str(CONFIGS / "mlp.yaml"), "--objective", "time",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["objective"] == "time"
    assert "pipeline time per micro-batch" in capsys.readouterr().out
