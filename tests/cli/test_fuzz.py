"""Fuzzing the command line with hypothesis: mutated configs, graph JSON, ONNX bytes and flags.

Every case must end within TIME_LIMIT seconds with exit status 0, or with exit status 2 and
`modelcut: error: ...` lines on stderr (one per problem found); never a traceback, never
another status. Seeded (derandomize) and small enough for CI: the file runs in well under a
minute. Commands are the quick ones (check, graph, compare --only multilevel, viz, and a few
partition runs); training with Ray is left to its own tests.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import signal
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelcut.cli import main

TIME_LIMIT = 30   # seconds per case; a hang fails the test instead of stalling the suite
FUZZ = settings(derandomize=True, deadline=timedelta(seconds=TIME_LIMIT), database=None,
                max_examples=50,
                suppress_health_check=[HealthCheck.too_slow])

CONFIGS = [
    {"name": "fuzz", "seed": 0,
     "model": {"builder": "mlp", "layers": 2, "width": 8, "in_features": 8, "classes": 4,
               "batch": 4},
     "cluster": {"uniform": {"devices": 2, "flops": "1 TFLOPS", "memory": "16GiB",
                             "bandwidth": "25GB/s", "latency": "10us"}},
     "partition": {"algorithm": "auto", "epsilon": 0.1, "acyclic": False},
     "training": {"steps": 2, "optimizer": "adam", "lr": 0.01, "micro_batches": 2,
                  "schedule": "1f1b"}},
    {"model": {"builder": "gpt", "layers": 1, "d_model": 8, "heads": 2, "seq": 4, "vocab": 16,
               "batch": 2},
     "cluster": {"devices": [{"name": "a", "flops": 1e12, "memory": "1GB"},
                             {"name": "b", "flops": "2 TFLOPS", "memory": 2**30}],
                 "links": [{"a": "a", "b": "b", "bandwidth": "10GB/s"}]},
     "partition": {"pin": {"wte": "a"}, "time_limit": "10s"}},
    {"model": {"builder": "lstm", "layers": 1, "hidden": 4, "vocab": 8, "seq": 3, "batch": 2},
     "cluster": {"nodes": 2, "devices_per_node": 2, "intra": "300GB/s", "inter": "25GB/s"}},
    {"model": {"builder": "resnet", "channels": [4, 8], "blocks": 1, "image": 8, "batch": 2}},
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["1e400", "-inf", ".nan", "16GB", "0", "mlp", "file", "1 TFLOPS", "10us"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.text(max_size=6), scalars, max_size=2))


def paths(data, prefix=()):
    """Every (path, value) in nested dicts and lists."""
    yield prefix, data
    items = data.items() if isinstance(data, dict) else (
        enumerate(data) if isinstance(data, list) else ())
    for key, value in items:
        yield from paths(value, prefix + (key,))


def set_at(data, path, value):
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


@st.composite
def mutated(draw, documents):
    """A deep copy of one of `documents` with one to three structural mutations."""
    data = copy.deepcopy(draw(st.sampled_from(documents)))
    for _ in range(draw(st.integers(1, 3))):
        found = list(paths(data))[1:]
        if not found:   # every key deleted
            data[draw(st.text(max_size=8))] = draw(values)
            continue
        path, _ = draw(st.sampled_from(found))
        kind = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if kind == "replace":
            set_at(data, path, draw(values))
        elif kind == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
        elif isinstance(parent, list):
            parent.append(draw(values))
    return data


@st.composite
def text_mutated(draw, text: str) -> str:
    """`text` with a slice deleted, duplicated or replaced by random characters."""
    i = draw(st.integers(0, len(text)))
    j = draw(st.integers(i, min(len(text), i + 20)))
    kind = draw(st.sampled_from(["delete", "duplicate", "insert"]))
    if kind == "delete":
        return text[:i] + text[j:]
    if kind == "duplicate":
        return text[:j] + text[i:j] + text[j:]
    return text[:i] + draw(st.text(max_size=8)) + text[j:]


@contextlib.contextmanager
def time_limit(seconds: int):
    def stop(signum, frame):
        raise TimeoutError(f"the command ran for more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(argv: list[str]) -> tuple[int, str]:
    """main(argv) with stdout and stderr captured; asserts the outcome is clean."""
    out, err = io.StringIO(), io.StringIO()
    with time_limit(TIME_LIMIT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    text = err.getvalue()
    assert "Traceback" not in text, (argv, text)
    assert code in (0, 2), (argv, code, text)
    if code == 2:
        lines = text.strip().splitlines()
        errors = [line for line in lines if line.startswith("modelcut: error: ")]
        assert errors and errors == lines[len(lines) - len(errors):], (argv, text)
        assert len(errors) == 1 or argv[0] == "check", (argv, text)   # a config's problems
    return code, text


def dump_yaml(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------- configs
@FUZZ
@given(data=mutated(CONFIGS))
def test_fuzz_config_structure(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.yaml"
        path.write_text(dump_yaml(data), encoding="utf-8")
        run(["check", str(path)])


@FUZZ
@given(data=st.data())
def test_fuzz_config_text(data):
    text = data.draw(text_mutated(dump_yaml(data.draw(st.sampled_from(CONFIGS)))))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.yaml"
        path.write_text(text, encoding="utf-8")
        run(["check", str(path)])


# ---------------------------------------------------------------------- graph JSON
def graph_documents() -> list[dict]:
    from autodiff.io import graph_to_dict
    from autodiff.ir import Graph, Node
    nodes = [Node("x", "input", (), (4, 8)), Node("w", "param", (), (8, 8), group="l0"),
             Node("b", "param", (), (8,), group="l0"),
             Node("h", "matmul", ("x", "w"), (4, 8), flops=512, group="l0"),
             Node("a", "add", ("h", "b"), (4, 8), group="l0"),
             Node("y", "relu", ("a",), (4, 8), group="l1"),
             Node("s", "sum", ("y",), (), attrs={"axis": None}),
             Node("k", "const", (), (2,), attrs={"value": [1.0, 2.0]}),
             Node("o", "custom_op", ("y", "k"), (3,), flops=7)]
    return [graph_to_dict(Graph(nodes, ["s", "o"], "fuzz"))]


@FUZZ
@given(document=mutated(graph_documents()))
def test_fuzz_graph_json(document):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.json"
        path.write_text(json.dumps(document), encoding="utf-8")
        run(["compare", "--graph", str(path), "--only", "multilevel"])
        run(["viz", "--graph", str(path), "--no-values", "--out", str(Path(tmp) / "viz")])


@FUZZ
@given(data=st.data())
def test_fuzz_graph_text(data):
    text = data.draw(text_mutated(json.dumps(graph_documents()[0], indent=1)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.json"
        path.write_text(text, encoding="utf-8")
        run(["compare", "--graph", str(path), "--only", "multilevel"])


@settings(FUZZ, max_examples=6)
@given(document=mutated(graph_documents()))
def test_fuzz_graph_partition(document):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.json"
        path.write_text(json.dumps(document), encoding="utf-8")
        run(["partition", "--graph", str(path), "--algorithm", "multilevel", "--out",
             str(Path(tmp) / "out")])


# ----------------------------------------------------------------------- ONNX bytes
def onnx_bytes() -> bytes:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], [0.5] * 64)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@st.composite
def byte_mutated(draw, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if kind == "flip" and i < len(data):
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "delete":
            del data[i:i + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i:]
    return bytes(data)


def test_fuzz_onnx_bytes():
    valid = onnx_bytes()   # skips without onnx

    @FUZZ
    @given(data=byte_mutated(valid))
    def fuzz(data):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "m.onnx").write_bytes(data)
            (Path(tmp) / "exp.yaml").write_text("model: {graph: m.onnx}\n")
            run(["check", "--graph", str(Path(tmp) / "exp.yaml")])

    fuzz()


# ---------------------------------------------------------------------------- flags
FLAG_VALUES = st.sampled_from(["0", "1", "2", "-1", "3.5", "inf", "nan", "-inf", "1e400",
                               str(2**70), "abc", "", "multilevel", "ilp", "auto", "x=1",
                               "x=1,y=2", "x+y", "(x", "group", "device"])
FLAGS = {
    "check": ["--graph"],
    "graph": ["--force"],
    "compare": ["--devices", "--epsilon", "--acyclic", "--time-limit", "--only"],
    "viz": ["--devices", "--epsilon", "--max-nodes", "--group", "--no-values", "--cluster",
            "--algorithm", "--force"],
    "partition": ["--devices", "--epsilon", "--max-nodes", "--algorithm", "--acyclic",
                  "--time-limit"],
}
SWITCHES = {"--graph", "--force", "--acyclic", "--group", "--no-values"}


@st.composite
def command_lines(draw, config: str, out: str):
    command = draw(st.sampled_from(["check", "graph", "compare", "compare", "viz", "viz",
                                    "viz", "partition"]))
    argv = [command, config]
    if command == "compare":
        argv += ["--only", "multilevel"]
    if command == "viz" and draw(st.booleans()):
        argv = ["viz", "--expr", draw(st.sampled_from(["x*y+1", "exp(x)/y", "x**y", "maximum(x, 0)"])),
                "--at", draw(FLAG_VALUES | st.just("x=1,y=2"))]
    for flag in draw(st.lists(st.sampled_from(FLAGS[command]), max_size=3, unique=True)):
        argv += [flag] if flag in SWITCHES else [flag, draw(FLAG_VALUES)]
    if command == "partition":   # keep the slow full runs few: a valid flag set is rare here
        argv += ["--devices", draw(st.sampled_from(["0", "-2", "nan", "2"]))]
    if command in ("graph", "viz", "partition"):
        argv += ["--out", out + (".json" if command == "graph" else "")]
    return argv


def test_fuzz_flags(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(dump_yaml(CONFIGS[0]))

    @settings(FUZZ, max_examples=30)
    @given(data=st.data())
    def fuzz(data):
        with tempfile.TemporaryDirectory() as tmp:
            run(data.draw(command_lines(str(config), str(Path(tmp) / "out"))))

    fuzz()
