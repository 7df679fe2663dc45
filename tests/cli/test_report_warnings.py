"""What a partition report must not hide: the relaxed balance cap and devices left without ops
(console, report.md, report.json), the glossary of its terms (report.md and HTML, one text),
and link traffic beyond 16 devices summarised instead of a k x k table."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from autodiff.io import save_graph
from autodiff.ir import Graph, Node
from modelcut.cli import main
from modelcut.config import load_config
from modelcut.html_report import html_report
from modelcut.report import GLOSSARY, top_links_table
from modelcut.units import format_size

MLP = Path(__file__).resolve().parents[2] / "configs" / "mlp.yaml"


def one_line(text: str) -> str:
    """Console text with rich's line wrapping undone."""
    return " ".join(text.split())


def heavy_node_graph() -> Graph:
    """x, w -> big (1000 FLOPs) -> a, b, c (10 FLOPs each) -> out (0 FLOPs): every op
    requires grad (w is a parameter), so train FLOPs are 3 x FLOPs."""
    nodes = [Node("x", "input", (), (8,), flops=0), Node("w", "param", (), (8,), flops=0),
             Node("big", "f", ("x", "w"), (8,), flops=1000)]
    nodes += [Node(name, "f", ("big",), (8,), flops=10) for name in ("a", "b", "c")]
    nodes.append(Node("out", "f", ("a", "b", "c"), (1,), flops=0))
    return Graph(nodes, ["out"], "heavy")


def test_a_relaxed_balance_cap_is_a_warning_naming_the_node(tmp_path, capsys):
    save_graph(heavy_node_graph(), tmp_path / "heavy.json")
    out = tmp_path / "run"
    assert main(["partition", "--graph", str(tmp_path / "heavy.json"), "--devices", "4",
                 "--out", str(out)]) == 0
    # big carries 3000 of 3 * (1000 + 30) = 3090 training FLOPs: 97.1%; a device's share 25%
    expected = ("balance cap relaxed by node 'big': it alone carries 97.1% of the training "
                "FLOPs, more than a device's share of 25.0% on 4 devices")
    report = json.loads((out / "report.json").read_text())
    assert report["result"]["relaxed_by"] == "big"
    assert [w for w in report["warnings"] if w.startswith(expected)]
    assert expected in (out / "report.md").read_text()
    assert "warning: " + expected in one_line(capsys.readouterr().out)


def test_no_warning_when_the_mean_load_decides(tmp_path, capsys):
    assert main(["partition", str(MLP), "--devices", "2", "--out", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["result"]["relaxed_by"] is None and report["warnings"] == []
    assert "warning:" not in capsys.readouterr().out
    assert "### Warnings" not in (tmp_path / "run" / "report.md").read_text()


def test_devices_without_ops_are_a_warning_and_64_links_are_summarised(tmp_path, capsys):
    out = tmp_path / "mlp64"
    assert main(["partition", str(MLP), "--devices", "64", "--out", str(out)]) == 0
    console = one_line(capsys.readouterr().out)
    graph = load_config(MLP).forward_graph()
    ops = [n.name for n in graph.nodes if not n.is_source]
    mapping = json.loads((out / "placement.json").read_text())
    empty = 64 - len({mapping[name] for name in ops})
    assert empty >= 64 - len(ops) > 0
    expected = f"{empty} of 64 devices hold no ops"
    report = json.loads((out / "report.json").read_text())
    assert [w for w in report["warnings"] if w.startswith(expected)]
    assert f"warning: {expected}" in console
    md = (out / "report.md").read_text()
    assert expected in md
    # no 64-column matrix: the heaviest links, the rest and the total, which is V
    assert max(line.count("|") for line in md.splitlines()) <= 8     # the Devices table
    traffic = np.array(report["link_traffic"])
    used = int((traffic > 0).sum())
    total = f"| all {used:,} used links | of {64 * 63:,} | " \
            f"{format_size(report['totals']['step_volume'])} | 100.0% |"
    assert total in md


def test_top_links_table_lists_the_heaviest_links_the_rest_and_the_total():
    k = 20
    traffic = np.zeros((k, k), dtype=int)
    traffic[3, 4], traffic[0, 1], traffic[5, 2], traffic[7, 8], traffic[1, 0] = 500, 300, 300, 100, 50
    report = {"devices": [{"name": f"d{i}"} for i in range(k)], "link_traffic": traffic.tolist()}
    table = top_links_table(report, limit=3)
    assert table.rows == (
        ("d3", "d4", "500 B", "40.0%"),       # 500 of 1250
        ("d0", "d1", "300 B", "24.0%"),       # ties in device order
        ("d5", "d2", "300 B", "24.0%"),
        ("2 other links", "", "150 B", "12.0%"),
        ("all 5 used links", "of 380", "1.25 kB", "100.0%"))


def test_the_glossary_is_one_text_in_report_md_and_html(tmp_path):
    out = tmp_path / "run"
    assert main(["partition", str(MLP), "--devices", "2", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    page = html_report(json.loads((out / "report.json").read_text()))
    assert "### Glossary" in md and "<caption>Glossary</caption>" in page
    terms = {term for term, _ in GLOSSARY}
    assert {"V", "V_f", "edge cut", "time-weighted volume", "busy", "ops"} <= terms
    for term, meaning in GLOSSARY:
        assert f"| {term} | {meaning} |" in md
        assert f"<td>{html.escape(meaning)}</td>" in page


def test_compare_warns_once_about_the_cap_and_per_algorithm_about_empty_devices(capsys):
    assert main(["compare", str(MLP), "--devices", "64", "--only", "contiguous,multilevel"]) == 0
    console = one_line(capsys.readouterr().out)
    assert console.count("warning: balance cap relaxed by node") == 1
    for name in ("contiguous", "multilevel"):
        assert f"warning: {name}: " in console and "of 64 devices hold no ops" in console


def test_memory_bars_stay_visible_far_below_capacity(tmp_path):
    from matplotlib.image import imread

    from modelcut.plots import BACKWARD_COLOUR, load_memory_plot
    # 160 kB on a 17 GB device: on one axis with the capacity the bars would be 1e-5 tall
    devices = [{"name": f"dev{i}", "train_flops": 1e6, "memory": 160_000 + 10_000 * i,
                "capacity": 17 * 10**9} for i in range(2)]
    report = {"devices": devices, "totals": {"imbalance": 1.0}, "settings": {"epsilon": 0.1},
              "result": {"relaxed_by": None}}
    rgb = (imread(load_memory_plot(report, tmp_path / "lm.png"))[..., :3] * 255).round()
    orange = [int(BACKWARD_COLOUR[i:i + 2], 16) for i in (1, 3, 5)]
    assert int((rgb == orange).all(axis=-1).sum()) > 5000
