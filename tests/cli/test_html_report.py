"""report.html: self-contained (no external requests), opens in headless Chromium with the
graph's SVG, the tables and the plots; report tables agree with a hand count."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from autodiff.ir import Graph, Node
from modelcut.html_report import html_report
from modelcut.plots import load_memory_plot, traffic_plot
from modelcut.report import build_report, write_report
from modelcut.viz import grouped_dot, svg_text
from partition.api import partition
from partition.cluster import uniform

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def chain_graph(layers: int = 4) -> Graph:
    """x -> (matmul with w_i, relu) per layer -> sum; explicit FLOPs, one group per layer."""
    nodes = [Node("x", "input", (), (8, 16), "float32", {}, "layer0")]
    h = "x"
    for i in range(layers):
        g = f"layer{i}"
        nodes += [Node(f"w{i}", "param", (), (16, 16), "float32", {}, g),
                  Node(f"m{i}", "matmul", (h, f"w{i}"), (8, 16), "float32", {}, g, 4096),
                  Node(f"r{i}", "relu", (f"m{i}",), (8, 16), "float32", {}, g, 128)]
        h = f"r{i}"
    nodes.append(Node("loss", "sum", (h,), (), "float32", {}, "head", 128))
    return Graph(nodes, ["loss"], "chain")


def make_report(tmp_path: Path):
    graph = chain_graph()
    cluster = uniform(2, memory=10**6)
    placement = partition(graph, cluster, "contiguous")
    report = build_report(graph, cluster, placement, settings={"epsilon": 0.1})
    return graph, cluster, placement, report


def test_report_rows_match_a_hand_count(tmp_path):
    graph, cluster, placement, report = make_report(tmp_path)
    mapping = placement.to_mapping()
    for d, row in zip(cluster.device_names, report["devices"]):
        mine = [n for n in graph.nodes if mapping[n.name] == d]
        assert row["ops"] == sum(not n.is_source for n in mine)
        assert row["parameters"] == sum(n.size for n in mine if n.op == "param")
        # train FLOPs: x3 for nodes that need gradients (everything after w0 here), x1 else
        assert row["train_flops"] == sum(3 * n.flops for n in mine if n.flops)
    assert sum(r["load_share"] for r in report["devices"]) == pytest.approx(1.0)
    traffic = np.array(report["link_traffic"])
    assert traffic.sum() == report["totals"]["step_volume"]
    # a contiguous split of a chain cuts exactly one activation: 8*16*4 bytes each way
    assert report["totals"]["forward_volume"] == report["totals"]["backward_volume"] == 512
    written = write_report(report, tmp_path)
    assert [p.name for p in written] == ["report.json", "report.md"]
    md = (tmp_path / "report.md").read_text()
    assert "| device |" in md and "step volume V" in md


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")
def test_html_report_opens_in_headless_chromium(tmp_path):
    graph, cluster, placement, report = make_report(tmp_path)
    images = [("Load and memory per device", load_memory_plot(report, tmp_path / "lm.png")),
              ("Link traffic", traffic_plot(report, tmp_path / "traffic.png"))]
    svg = svg_text(grouped_dot(graph, placement=placement.to_mapping(),
                               devices=cluster.device_names))
    page = html_report(report, images, svg)
    html_path = tmp_path / "report.html"
    html_path.write_text(page)

    # self-contained: every src/href is inline data or a fragment, no stylesheet/script links
    for url in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert url.startswith(("data:", "#")), url
    assert "<script" not in page and "<link" not in page

    profile = tmp_path / "profile"
    common = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(common + ["--dump-dom", html_path.as_uri()], capture_output=True,
                         text=True, timeout=60).stdout
    shot = tmp_path / "page.png"
    subprocess.run(common + [f"--screenshot={shot}", "--window-size=1280,2400",
                             html_path.as_uri()], capture_output=True, timeout=60)
    graph_section = dom[dom.index('id="graph"'):]
    assert "<svg" in graph_section
    for group in ("layer0", "layer3", "head"):          # the group boxes are in the SVG
        assert f">{group}</text>" in graph_section
    for caption in ("Devices", "Totals", "Link traffic per step"):
        assert f"<caption>{caption}" in dom
    assert dom.count('src="data:image/png;base64,') == 2
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def colour_pixels(png: Path, hex_colour: str) -> int:
    """How many pixels of `png` have exactly the RGB colour `hex_colour`."""
    from matplotlib.image import imread
    rgb = (imread(png)[..., :3] * 255).round().astype(int)
    target = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    return int((rgb == target).all(axis=-1).sum())


def test_schedule_plot_gantt_and_busy_fallback(tmp_path):
    from modelcut.plots import BACKWARD_COLOUR, FORWARD_COLOUR, schedule_plot
    devices = ("dev0", "dev1")
    forward_only = [{"device": "dev0", "start": 0.0, "end": 2e-3, "kind": "forward"},
                    {"device": "dev1", "start": 2e-3, "end": 4e-3, "kind": "forward"}]
    both = forward_only + [{"device": "dev1", "start": 4e-3, "end": 8e-3, "kind": "backward"},
                           {"device": "dev0", "start": 8e-3, "end": 1.2e-2, "kind": "backward"}]
    base = {"makespan": 1.2e-2, "busy": {"dev0": 0.5, "dev1": 0.5}, "micro_batches": 1}
    a = schedule_plot({**base, "timeline": forward_only}, devices, tmp_path / "a.png")
    b = schedule_plot({**base, "timeline": both}, devices, tmp_path / "b.png")
    c = schedule_plot(base, devices, tmp_path / "c.png")          # totals only
    assert colour_pixels(b, BACKWARD_COLOUR) > 1000                 # backward bars drawn
    assert colour_pixels(a, BACKWARD_COLOUR) < colour_pixels(b, BACKWARD_COLOUR) / 10
    assert colour_pixels(c, FORWARD_COLOUR) > 1000                  # busy bars drawn
