"""Hostile inputs through the command line (issue 13's sweep, rebuilt): each case must end with
exit status 2 and exactly one stderr line `modelcut: error: ...` naming the culprit, with no
traceback, no hang and no file written.

Cases run in-process through modelcut.cli.main; those that could hang or exhaust the stack if
the guard were missing run in a subprocess with a timeout.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from autodiff.io import MAX_JSON_BYTES, save_graph
from autodiff.ir import Graph, Node
from modelcut.cli import main
from modelcut.config_yaml import MAX_DEPTH, YamlFileError, read_yaml

ROOT = Path(__file__).resolve().parents[2]
MLP = """\
name: tiny
seed: 0
model: {builder: mlp, layers: 2, width: 8, in_features: 8, classes: 4, batch: 4}
cluster: {uniform: {devices: 2}}
training: {steps: 2}
"""


def tiny_graph() -> Graph:
    nodes = [Node("x", "input", (), (4, 8)), Node("w", "param", (), (8, 8)),
             Node("h", "matmul", ("x", "w"), (4, 8), flops=512), Node("y", "relu", ("h",), (4, 8))]
    return Graph(nodes, ["y"], "tiny")


def graph_document(**changes) -> dict:
    """The tiny graph as a JSON document, with node fields changed by name: {"h": {...}}."""
    from autodiff.io import graph_to_dict
    document = graph_to_dict(tiny_graph())
    for node in document["nodes"]:
        node.update(changes.get(node["name"], {}))
    return document


def write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def config_with(tmp_path: Path, text: str) -> str:
    return str(write(tmp_path / "exp.yaml", text))


def graph_file(tmp_path: Path, document) -> str:
    return str(write(tmp_path / "g.json", document))


def gzip_bomb(path: Path) -> Path:
    """Gzip members of zeros, repeated: ~1.5 MB on disk inflating past MAX_JSON_BYTES."""
    block = 64 * 2**20
    member = gzip.compress(bytes(block), compresslevel=9)
    path.write_bytes(member * (MAX_JSON_BYTES // block + 2))
    return path


def truncated_checkpoint(tmp_path: Path) -> str:
    from executor import checkpoint
    folder = checkpoint.save(tmp_path / "ckpt", {"params": {"w": np.zeros((8, 8))}, "step": 1})
    data = (folder / "params.npz").read_bytes()
    (folder / "params.npz").write_bytes(data[:len(data) // 2])
    return str(folder)


def checkpoint_missing_keys(tmp_path: Path) -> str:
    from executor import checkpoint
    folder = checkpoint.save(tmp_path / "ckpt", {"params": {"w": np.zeros((8, 8))}, "step": 1})
    index = json.loads((folder / "checkpoint.json").read_text())
    del index["params"], index["step"]
    (folder / "checkpoint.json").write_text(json.dumps(index))
    return str(folder)


def out(tmp_path: Path) -> list[str]:
    return ["--out", str(tmp_path / "out")]


# (id, build(tmp_path) -> argv, a phrase the error line must contain)
CASES = [
    ("config-not-utf8", lambda t: ["check", str(write(t / "exp.yaml", MLP.encode() + b"# \xff\xfe\n"))],
     "not UTF-8"),
    ("cluster-file-not-utf8", lambda t: [
        "check", (write(t / "c.yaml", "uniform: {devices: 2}\n# caf\xe9\n".encode("latin-1")),
                  config_with(t, MLP.replace("cluster: {uniform: {devices: 2}}",
                                             "cluster: {file: c.yaml}")))[1]], "c.yaml: not UTF-8"),
    ("seed-negative", lambda t: ["check", config_with(t, MLP.replace("seed: 0", "seed: -1"))],
     "seed: expected a seed in 0..2^32-1, got -1"),
    ("seed-2^70", lambda t: ["check", config_with(t, MLP.replace("seed: 0", f"seed: {2**70}"))],
     "seed: expected a seed in 0..2^32-1 at most"),
    ("training-seed-negative", lambda t: ["check", config_with(
        t, MLP.replace("training: {steps: 2}", "training: {steps: 2, seed: -5}"))],
     "training.seed"),
    ("epsilon-inf-flag", lambda t: ["partition", config_with(t, MLP), "--epsilon", "inf",
                                    *out(t)], "--epsilon: expected a finite number"),
    ("epsilon-nan-flag", lambda t: ["partition", config_with(t, MLP), "--epsilon", "nan",
                                    *out(t)], "--epsilon: expected a finite number"),
    ("epsilon-negative-flag", lambda t: ["compare", config_with(t, MLP), "--epsilon", "-1"],
     "--epsilon: expected a non-negative number"),
    ("time-limit-inf-flag", lambda t: ["partition", config_with(t, MLP), "--time-limit", "inf",
                                       *out(t)], "--time-limit"),
    ("time-limit-zero-flag", lambda t: ["partition", config_with(t, MLP), "--time-limit", "0",
                                        *out(t)], "--time-limit: expected a positive number"),
    ("devices-zero-flag", lambda t: ["partition", config_with(t, MLP), "-k", "0", *out(t)],
     "--devices/-k: expected an integer in 1..128"),
    ("devices-huge-flag", lambda t: ["partition", config_with(t, MLP), "-k", str(2**40),
                                     *out(t)], "--devices/-k"),
    ("train-devices-huge-flag", lambda t: ["train", config_with(t, MLP), "-k", "100000",
                                           "--executor", "local", *out(t)], "1..128"),
    ("train-steps-huge-flag", lambda t: ["train", config_with(t, MLP), "--steps", str(10**20),
                                         "--executor", "local", *out(t)], "--steps"),
    ("calibrate-devices-huge-flag", lambda t: ["calibrate", "-k", str(2**40), *out(t)],
     "1..128"),
    ("devices-not-int-flag", lambda t: ["partition", config_with(t, MLP), "-k", "two",
                                        *out(t)], "--devices/-k: expected an integer"),
    ("max-nodes-negative", lambda t: ["partition", config_with(t, MLP), "--max-nodes", "-1",
                                      *out(t)], "--max-nodes: expected an integer in 0.."),
    ("viz-max-nodes-negative", lambda t: ["viz", config_with(t, MLP), "--max-nodes", "-1",
                                          *out(t)], "--max-nodes"),
    ("resume-truncated-params", lambda t: ["train", config_with(t, MLP), "--resume",
                                           truncated_checkpoint(t), *out(t)], "params.npz"),
    ("resume-checkpoint-missing-keys", lambda t: ["train", config_with(t, MLP), "--resume",
                                                  checkpoint_missing_keys(t), *out(t)],
     "checkpoint.json"),
    ("flops-10^400", lambda t: ["partition", "--graph", graph_file(
        t, graph_document(h={"flops": 10**400})), *out(t)], "('h'): flops must be"),
    ("flops-1e400-float", lambda t: ["partition", "--graph", str(write(
        t / "g.json", json.dumps(graph_document()).replace('"flops": 512', '"flops": 1e400'))),
        *out(t)], "('h'): flops must be a finite non-negative number"),
    ("flops-nan", lambda t: ["partition", "--graph", str(write(
        t / "g.json", json.dumps(graph_document()).replace('"flops": 512', '"flops": NaN'))),
        *out(t)], "('h'): flops must be a finite non-negative number"),
    ("flops-negative-float", lambda t: ["partition", "--graph", graph_file(
        t, graph_document(h={"flops": -1.5})), *out(t)], "('h'): flops must be"),
    ("dims-2^62", lambda t: ["partition", "--graph", graph_file(
        t, graph_document(x={"shape": [2**62, 8]})), *out(t)], "'x': shape"),
    ("dims-total-bytes", lambda t: ["partition", "--graph", graph_file(t, {
        "format": "modelcut.graph", "version": 1,
        "nodes": [{"name": f"p{i}", "op": "param", "shape": [2**48], "dtype": "float64"}
                  for i in range(1000)], "outputs": ["p0"]}), *out(t)], "more than 2^60"),
    ("json-huge-integer", lambda t: ["partition", "--graph", str(write(
        t / "g.json", json.dumps(graph_document()).replace('"flops": 512',
                                                           '"flops": ' + "9" * 5000))),
        *out(t)], "g.json"),
    ("matmul-declared-shape", lambda t: ["partition", "--graph", graph_file(
        t, graph_document(h={"shape": [4, 9]})), *out(t)],
     "node 'h': declared shape [4, 9], but matmul of [4, 8] and [8, 8] gives [4, 8]"),
    ("matmul-operands", lambda t: ["partition", "--graph", graph_file(
        t, graph_document(w={"shape": [9, 8]})), *out(t)], "node 'h': matmul("),
    ("graph-no-nodes", lambda t: ["partition", "--graph", graph_file(
        t, {"format": "modelcut.graph", "version": 1, "nodes": [], "outputs": []}), *out(t)],
     "no nodes"),
    ("graph-flops-string", lambda t: ["partition", "--graph", graph_file(
        t, graph_document(h={"flops": "1e9"})), *out(t)], "'h'"),
    ("gzip-bomb", lambda t: ["partition", "--graph", str(gzip_bomb(t / "g.json.gz")), *out(t)],
     "inflates to more than"),
    ("gzip-corrupt", lambda t: ["partition", "--graph", str(write(
        t / "g.json.gz", gzip.compress(b'{"a": 1}' * 100)[:40] + b"\x00garbage")), *out(t)],
     "g.json.gz"),
    ("layers-2^63", lambda t: ["check", config_with(t, MLP.replace("layers: 2",
                                                                  "layers: 9223372036854775808"))],
     "model.layers: expected a positive integer at most 1,024"),
    ("gpt-logits-2^68-graph", lambda t: ["check", "--graph", config_with(
        t, f"model: {{builder: gpt, layers: 1, d_model: 8, heads: 2, seq: {2**20}, "
           f"vocab: {2**24}, batch: {2**20}}}\n")], "more than 2^48 elements"),
    ("lstm-unrolled", lambda t: ["check", config_with(
        t, "model: {builder: lstm, layers: 64, hidden: 8, vocab: 8, seq: 100000, batch: 2}\n")],
     "model.seq"),
    ("devices-2^40-config", lambda t: ["check", config_with(
        t, MLP.replace("devices: 2", f"devices: {2**40}"))], "cluster.uniform.devices"),
    ("duplicate-yaml-key", lambda t: ["check", config_with(t, MLP + "seed: 3\n")],
     "line 6 column 1: duplicate key 'seed' (first given at line 2)"),
    ("duplicate-nested-key", lambda t: ["check", config_with(
        t, MLP.replace("training: {steps: 2}", "training:\n  steps: 2\n  lr: 0.1\n  steps: 3"))],
     "duplicate key 'steps'"),
    ("yaml-billion-laughs", lambda t: ["check", config_with(t, "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 8)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
        + MLP)], "aliases expand"),
    ("yaml-recursive-alias", lambda t: ["check", config_with(t, "x: &x [1, *x]\n" + MLP)],
     "exp.yaml"),
    ("yaml-huge-integer", lambda t: ["check", config_with(t, MLP.replace("seed: 0",
                                                                         "seed: " + "9" * 5000))],
     "exp.yaml"),
    ("zero-byte-onnx-check", lambda t: (write(t / "m.onnx", b""), pytest.importorskip("onnx"),
                                        ["check", "--graph", config_with(
                                            t, "model: {graph: m.onnx}\n")])[2], "m.onnx"),
    ("zero-byte-onnx-graph", lambda t: (write(t / "m.onnx", b""), pytest.importorskip("onnx"),
                                        ["graph", config_with(t, "model: {graph: m.onnx}\n"),
                                         "--out", str(t / "out.json")])[2], "empty"),
    ("garbage-onnx", lambda t: (write(t / "m.onnx", b"\x08\x07garbage" * 10),
                                pytest.importorskip("onnx"),
                                ["check", "--graph", config_with(t, "model: {graph: m.onnx}\n")])[2],
     "m.onnx"),
    ("missing-cluster-file", lambda t: ["check", config_with(
        t, MLP.replace("cluster: {uniform: {devices: 2}}", "cluster: {file: nowhere.yaml}"))],
     "relative to the config file's folder"),
    ("viz-expr-syntax", lambda t: ["viz", "--expr", "x +* y", "--at", "x=1,y=2", *out(t)],
     "syntax error"),
    ("viz-placement-not-utf8", lambda t: ["viz", config_with(t, MLP), "--placement", str(
        write(t / "p.json", b'{"x": "\xff"}')), "--no-values", *out(t)], "p.json: not valid JSON"),
    ("compare-json-exists", lambda t: ["compare", config_with(t, MLP), "--only", "multilevel",
                                       "--json", str(write(t / "rows.json", "[]"))],
     "rows.json already exists; pass --force"),
    ("config-is-a-folder", lambda t: ["check", str(t)], "cannot read the file"),
    ("graph-is-a-folder", lambda t: ["partition", "--graph", str(t), *out(t)],
     "cannot read the file"),
    ("config-top-level-list", lambda t: ["check", config_with(t, "- 1\n- 2\n")],
     "expected a mapping of sections"),
    ("yaml-bad-date", lambda t: ["check", config_with(t, MLP.replace("name: tiny",
                                                                     "name: 2024-13-45"))],
     "exp.yaml"),
    ("yaml-control-character", lambda t: ["check", config_with(t, "\x01" + MLP)],
     "unacceptable character"),
    ("viz-expr-at-inf", lambda t: ["viz", "--expr", "x + y", "--at", "x=inf,y=2", *out(t)],
     "--at"),
]


def cases(kind: str):
    return [pytest.param(build, phrase, id=name) for name, build, phrase in CASES]


def assert_one_error_line(code: int, err: str, phrase: str) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("modelcut: error: "), err
    assert phrase in lines[0], (phrase, lines[0])


@pytest.mark.parametrize("build,phrase", cases("in-process"))
def test_hostile_input_is_one_error_line(tmp_path, capsys, build, phrase):
    argv = build(tmp_path)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert_one_error_line(code, captured.err, phrase)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()


def run_cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "modelcut", *argv], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def nested_json(depth: int) -> str:
    return ('{"format": "modelcut.graph", "version": 1, "name": ' + "[" * depth + "]" * depth
            + ', "nodes": [], "outputs": []}')


# (id, build(tmp_path) -> argv, phrase): cases that would recurse past the C stack or hang
# without their guard, run in a subprocess with a timeout
SUBPROCESS_CASES = [
    ("json-200k-deep", lambda t: ["partition", "--graph", str(write(t / "g.json",
                                                                      nested_json(200_000))),
                                  *out(t)], "nested too deeply"),
    ("yaml-50k-deep", lambda t: ["check", config_with(t, "a: " + "[" * 50_000 + "]" * 50_000
                                                      + "\n" + MLP)], "nested deeper than 64"),
    ("yaml-50k-deep-block", lambda t: ["check", config_with(t, "".join(
        " " * i + f"k{i}:\n" for i in range(2000)) + MLP)], "nested deeper than 64"),
    ("viz-expr-20k-terms", lambda t: ["viz", "--expr", "+".join(["x"] * 20_000), "--at", "x=1",
                                      *out(t)], "--expr"),
    ("viz-expr-deep-parens", lambda t: ["viz", "--expr", "(" * 5000 + "x" + ")" * 5000, "--at",
                                        "x=1", *out(t)], "--expr"),
    ("viz-expr-deep-unary", lambda t: ["viz", "--expr=" + "-" * 1500 + "x", "--at", "x=1",
                                       *out(t)], "nests deeper than 100 levels"),
    ("viz-expr-deep-calls", lambda t: ["viz", "--expr", "exp(" * 300 + "x" + ")" * 300, "--at",
                                       "x=1", *out(t)], "expression"),
    ("layers-2^63-partition", lambda t: ["partition", config_with(
        t, MLP.replace("layers: 2", "layers: 9223372036854775808")), *out(t)], "model.layers"),
    ("ilp-300k-chain", lambda t: ["partition", "--graph", graph_file(t, chain(300_000)),
                                  "--algorithm", "ilp", *out(t)], "ilp"),
]


def chain(n: int) -> dict:
    nodes = [{"name": "n0", "op": "input", "shape": [4], "dtype": "float32"}]
    nodes += [{"name": f"n{i}", "op": "relu", "inputs": [f"n{i - 1}"], "shape": [4],
               "dtype": "float32"} for i in range(1, n)]
    return {"format": "modelcut.graph", "version": 1, "nodes": nodes, "outputs": [f"n{n - 1}"]}


@pytest.mark.parametrize("build,phrase", [pytest.param(b, p, id=n)
                                          for n, b, p in SUBPROCESS_CASES])
def test_hostile_input_in_a_subprocess(tmp_path, build, phrase):
    done = run_cli(*build(tmp_path), timeout=120)
    assert_one_error_line(done.returncode, done.stderr, phrase)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_many_devices_on_a_small_model_is_not_a_crash(tmp_path, capsys):
    """64 devices for a 27-node MLP: most stay empty; the command still succeeds."""
    config = ROOT / "configs" / "mlp.yaml"
    assert main(["partition", str(config), "--devices", "64", "--algorithm", "multilevel",
                 "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["devices"]) == 64
    assert "Traceback" not in capsys.readouterr().err


def test_viz_does_not_overwrite_without_force(tmp_path, capsys):
    argv = ["viz", "--expr", "x * y", "--at", "x=2,y=3", "--out", str(tmp_path)]
    assert main(argv) == 0
    before = (tmp_path / "graph.dot").read_text()
    capsys.readouterr()
    assert main(argv[:2] + ["x + y"] + argv[3:]) == 2
    assert_one_error_line(2, capsys.readouterr().err, "graph.dot already exists; pass --force")
    assert (tmp_path / "graph.dot").read_text() == before
    assert main(argv[:2] + ["x + y"] + argv[3:] + ["--force"]) == 0
    assert (tmp_path / "graph.dot").read_text() != before


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("modelcut ")


def test_float_flops_are_accepted(tmp_path, capsys):
    """Issue 14: flops may be any finite non-negative JSON number (SPEC section 1)."""
    document = graph_document(h={"flops": 2.17e13}, y={"flops": 0.0})
    code = main(["partition", "--graph", graph_file(tmp_path, document), *out(tmp_path)])
    assert code == 0, capsys.readouterr().err
    from autodiff.io import load_graph
    graph = load_graph(tmp_path / "g.json")
    assert graph["h"].flops == 21_700_000_000_000 and graph["y"].flops == 0


# The strict YAML reader every config and cluster file goes through (modelcut.config_yaml)
def yaml_file(tmp_path: Path, text) -> Path:
    path = tmp_path / "c.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text,message", [
    ("a: 1\nb: 2\na: 3\n", r"line 3 column 1: duplicate key 'a' \(first given at line 1\)"),
    ("m: {x: 1, x: 2}\n", "duplicate key 'x'"),
    (b"a: caf\xe9\n", r"not UTF-8 text \(byte 0xe9 at line 1\)"),
    ("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH}"),
    ("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcde", "bcdef")),
     "expand to more than 1,000,000 values"),
    ("x: &x [1, *x]\n", "refers to a list or mapping that contains it"),
    ("n: " + "9" * 5000 + "\n", "not valid YAML"),
])
def test_strict_yaml_rejects(tmp_path, text, message):
    with pytest.raises(YamlFileError, match=message):
        read_yaml(yaml_file(tmp_path, text))


def test_strict_yaml_accepts_merge_keys_and_shared_aliases(tmp_path):
    text = ("base: &b {devices: 2, flops: 7}\nuniform:\n  <<: *b\n  devices: 4\n"
            "pair: [*b, *b]\n")
    assert read_yaml(yaml_file(tmp_path, text)) == {
        "base": {"devices": 2, "flops": 7}, "uniform": {"devices": 4, "flops": 7},
        "pair": [{"devices": 2, "flops": 7}] * 2}


def test_cluster_file_is_relative_to_the_config_and_errors_name_the_resolved_path(
        tmp_path, monkeypatch, capsys):
    """`cluster: {file: cluster.yaml}` is read next to the config whatever the working folder;
    when it is missing, the error names the path it resolved to."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "cluster.yaml").write_text("cluster: {uniform: {devices: 3}}\n")
    text = MLP.replace("cluster: {uniform: {devices: 2}}", "cluster: {file: cluster.yaml}")
    (configs / "exp.yaml").write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from modelcut.config import load_config
    assert load_config(Path("..") / "configs" / "exp.yaml").cluster_spec()["uniform"]["devices"] == 3
    (configs / "cluster.yaml").unlink()
    assert main(["check", str(Path("..") / "configs" / "exp.yaml")]) == 2
    resolved = str((configs / "cluster.yaml").resolve())
    assert_one_error_line(2, capsys.readouterr().err,
                          f"cluster.file: 'cluster.yaml' resolves to {resolved}, which is not a "
                          "file (a relative path is relative to the config file's folder)")
