"""`modelcut partition` and `modelcut compare` end to end: every bundled config at k = 2, 4, 8
writes every output, the files agree with each other and with SPEC metrics recomputed from
placement.json, and bad input exits 2 with a clear message."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from modelcut.cli import main
from modelcut.config import load_config
from partition.cluster import Cluster
from partition.metrics import compute_metrics

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
FILES = ("placement.json", "report.json", "report.md", "graph.dot", "load_memory.png",
         "schedule.png", "traffic.png")
PNG = b"\x89PNG\r\n\x1a\n"
# the error when no placement fits the balance cap at all (partition.algorithms.packing)
SMALLEST = re.compile(r"no (acyclic )?placement of these loads on \d+ devices fits "
                      r"epsilon=[0-9.]+ .*the smallest epsilon that admits one is ([0-9.]+)")


def partition_cli(*argv: str) -> int:
    return main(["partition", *argv])


def check_outputs(out: Path, config: Path, k: int) -> dict:
    """Every file is there and consistent: placement.json covers the graph, report.json's
    volumes equal the metrics recomputed from placement.json, PNGs are PNGs."""
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    for name in ("load_memory.png", "schedule.png", "traffic.png"):
        assert (out / name).read_bytes()[:8] == PNG
    cfg = load_config(config)
    graph = cfg.forward_graph()
    if (out / "graph.json.gz").exists():       # shard auto rewrote the graph: it is placed
        from autodiff.io import load_graph
        graph = load_graph(out / "graph.json.gz")
    cluster = Cluster.from_spec(cfg.cluster_spec())
    cluster = cluster if cluster.k == k else cluster.resized(k)
    mapping = json.loads((out / "placement.json").read_text())
    assert set(mapping) == {n.name for n in graph.nodes}
    assert set(mapping.values()) <= set(cluster.device_names)
    index = {d: i for i, d in enumerate(cluster.device_names)}
    assignment = np.array([index[mapping[n.name]] for n in graph.nodes], dtype=np.int32)
    report = json.loads((out / "report.json").read_text())
    metrics = compute_metrics(graph, assignment, cluster,
                              micro_batches=cfg.training.micro_batches,
                              optimizer=cfg.training.optimizer)
    totals = report["totals"]
    assert totals["step_volume"] == metrics.step_volume
    assert totals["forward_volume"] == metrics.forward_volume
    assert totals["edge_cut"] == metrics.edge_cut
    assert [d["name"] for d in report["devices"]] == list(cluster.device_names)
    assert sum(d["ops"] for d in report["devices"]) == sum(not n.is_source for n in graph.nodes)
    assert sum(d["parameters"] for d in report["devices"]) == graph.num_parameters()
    assert np.array(report["link_traffic"]).sum() == metrics.step_volume
    assert totals["makespan"] > 0 and totals["speedup"] > 0
    assert "step volume V" in (out / "report.md").read_text()
    dot = (out / "graph.dot").read_text()
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    fills = set(re.findall(r'fillcolor="([^"]+)"', dot)) - {"#ffffff"}
    assert len(fills) == len(set(mapping.values()))      # one colour per device used
    return report


def device_counts(config: Path) -> tuple[int, ...]:
    """k = 2, 4, 8, or only the cluster's own size for a listed-devices cluster (which cannot
    be resized)."""
    cluster = Cluster.from_spec(load_config(config).cluster_spec())
    return (2, 4, 8) if cluster.preset else (cluster.k,)


def partition_at_own_epsilon(capsys, *argv: str):
    """Run `modelcut partition` at the config's own epsilon. Where the error proves that no
    placement fits that epsilon, run again at the smallest epsilon it names, which must work."""
    status = partition_cli(*argv)
    printed = capsys.readouterr()
    proof = SMALLEST.search(printed.err) if status == 2 else None
    if proof:
        status = partition_cli(*argv, "--epsilon", proof.group(2))
        printed = capsys.readouterr()
    assert status == 0, printed.err
    return printed, proof


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_bundled_config_partitions_at_2_4_8_devices(config, tmp_path, capsys):
    for k in device_counts(config):
        out = tmp_path / f"k{k}"
        printed, _ = partition_at_own_epsilon(capsys, str(config), "--devices", str(k),
                                              "--out", str(out), "--time-limit", "20")
        report = check_outputs(out, config, k)
        assert len(report["devices"]) == k
        for device in report["devices"]:                       # one table row per device
            assert device["name"] in printed.out
        assert "step volume V" in printed.out and "Top" in printed.out


def test_default_output_folder_and_overwrite_protection(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    mlp = next(c for c in CONFIGS if c.stem == "mlp")
    assert partition_cli(str(mlp), "--html") == 0          # the config's own settings
    assert (tmp_path / "runs" / "mlp" / "report.html").exists()
    capsys.readouterr()
    assert partition_cli(str(mlp)) == 2
    assert "pass --force" in capsys.readouterr().err
    assert partition_cli(str(mlp), "--force") == 0
    assert not (tmp_path / "runs" / "mlp" / "report.html").exists()   # stale output removed


def test_graph_file_instead_of_config(tmp_path, capsys):
    from autodiff.io import save_graph
    mlp = next(c for c in CONFIGS if c.stem == "mlp")
    graph = load_config(mlp).forward_graph()
    save_graph(graph, tmp_path / "g.json")
    # 4 equal layers on 3 devices: two share one, so only epsilon >= 0.454 admits a placement
    _, proof = partition_at_own_epsilon(capsys, "--graph", str(tmp_path / "g.json"),
                                        "--devices", "3", "--out", str(tmp_path / "out"))
    assert proof and proof.group(2) == "0.454"
    mapping = json.loads((tmp_path / "out" / "placement.json").read_text())
    assert set(mapping) == {n.name for n in graph.nodes}
    assert set(mapping.values()) <= {"dev0", "dev1", "dev2"}


def test_bad_algorithm_exits_2_naming_it(tmp_path, capsys):
    mlp = next(c for c in CONFIGS if c.stem == "mlp")
    assert partition_cli(str(mlp), "--algorithm", "no_such_algo", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "unknown algorithm 'no_such_algo'" in err and "contiguous" in err
    assert "Traceback" not in err


def test_impossible_memory_budget_exits_2_with_the_budget(tmp_path, capsys):
    config = tmp_path / "tiny-memory.yaml"
    config.write_text("model: {builder: mlp, layers: 2, width: 64, batch: 8}\n"
                      "cluster:\n  uniform: {devices: 2, memory: 4kB}\n")
    assert partition_cli(str(config), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    # the message names the budget that is too small: 4 kB devices
    assert err.startswith("modelcut: error: ") and "memory" in err
    assert "4000" in err or "4 kB" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_compare_runs_every_algorithm(tmp_path, capsys):
    from partition.algorithms import ALGORITHMS
    mlp = next(c for c in CONFIGS if c.stem == "mlp")
    rows_file = tmp_path / "rows.json"
    assert main(["compare", str(mlp), "--devices", "2", "--json", str(rows_file)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(rows_file.read_text())
    assert [r["algorithm"] for r in rows] == list(ALGORITHMS)
    for row in rows:
        assert row["algorithm"] in printed
    ok = [r for r in rows if not r.get("error")]
    assert ok, "no algorithm succeeded"
    for row in ok:
        m = row["metrics"]
        assert m["step_volume"] == m["forward_volume"] + m["backward_volume"]
        assert m["imbalance"] <= 1.1 + 1e-9
