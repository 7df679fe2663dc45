"""`model: {torch: "module:factory"}` through the CLI: check, graph, partition, compare and
train accept it; training starts from the module's weights on data drawn like its example
inputs; a bad factory is a one-line config error."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from modelcut.cli import main  # noqa: E402

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(11, 8)
            self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 11))

        def forward(self, tokens):
            return self.mlp(self.embed(tokens))

    def tagger():
        torch.manual_seed(0)
        return Tagger(), (torch.randint(0, 11, (4, 5)),)

    def broken():
        return 42
''')


def write_config(folder: Path, factory: str = "zoo_tagger:tagger", **model) -> Path:
    (folder / "zoo_tagger.py").write_text(FACTORY)
    data = {"name": "tagger", "model": {"torch": factory, **model},
            "cluster": {"uniform": {"devices": 2}}, "partition": {"epsilon": 0.3},
            "training": {"steps": 5, "optimizer": "adam", "lr": 0.01}}
    path = folder / "tagger.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_check_graph_partition_compare_accept_a_torch_model(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["check", str(config), "--graph"]) == 0
    assert "zoo_tagger:tagger" in capsys.readouterr().out
    assert main(["graph", str(config), "--out", str(tmp_path / "g.json")]) == 0
    graph = json.loads((tmp_path / "g.json").read_text())
    assert graph["name"] == "Tagger"
    params = {n["name"]: n for n in graph["nodes"] if n["op"] == "param"}
    assert set(params) == {"embed.weight", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                           "mlp.2.bias"}
    assert params["mlp.0.weight"]["group"] == "mlp.0"
    assert graph["nodes"][-1]["op"] == "cross_entropy"
    assert main(["partition", str(config), "--out", str(tmp_path / "p")]) == 0
    assert main(["compare", str(config)]) == 0


def test_train_starts_from_the_module_weights_and_the_loss_falls(tmp_path):
    from autodiff.models.imported import imported_data, with_loss
    from autodiff.interpreter import Interpreter
    from autodiff.torch_import import import_torch
    config = write_config(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(config), "--executor", "local", "--out", str(out)]) == 0
    losses = json.loads((out / "report.json").read_text())["loss"]
    assert len(losses) == 5 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    # step 0's loss is the imported module's own loss on the first batch
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        import zoo_tagger
    finally:
        sys.path.remove(str(tmp_path))
    module, example = zoo_tagger.tagger()
    im = import_torch(module, example)
    graph = with_loss(im.graph)
    feeds = imported_data(im.inputs, graph, seed=0)(0)
    logits = module(torch.from_numpy(feeds["tokens"]))
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 11),
                                                 torch.from_numpy(feeds["target"]).reshape(-1))
    assert losses[0] == pytest.approx(expected.item(), rel=1e-5)
    value = Interpreter(graph).run(feeds, im.params).outputs[graph.outputs[0]]
    assert float(value) == pytest.approx(expected.item(), rel=1e-5)


def test_fixed_data_repeats_and_fresh_data_does_not():
    from autodiff.models.imported import imported_data, with_loss
    from autodiff.torch_import import InputSpec
    from autodiff.ir import Graph, Node
    graph = Graph([Node("x", "input", (), (4, 3), "float32"),
                   Node("ids", "input", (), (4,), "int64")], ["x"], "toy")
    loss_graph = with_loss(graph, "cross_entropy")
    specs = (InputSpec("x", (4, 3), "float32"), InputSpec("ids", (4,), "int64", 2, 9))
    fixed = imported_data(specs, loss_graph, seed=1)
    fresh = imported_data(specs, loss_graph, seed=1, fresh=True)
    a, b = fixed(0), fixed(3)
    assert set(a) == {"x", "ids", "target"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["ids"].min() >= 2 and a["ids"].max() < 9 and a["target"].max() < 3
    assert not np.array_equal(fresh(0)["x"], fresh(1)["x"])
    np.testing.assert_array_equal(fresh(0)["x"], a["x"])


@pytest.mark.parametrize("factory, expected", [
    ("nowhere_module:tagger", "cannot import 'nowhere_module'"),
    ("zoo_tagger:missing", "has no callable 'missing'"),
    ("zoo_tagger:broken", "must return (module, example_inputs)"),
    ("not a spec", "expected \"package.module:factory\""),
])
def test_bad_factories_are_one_line_errors(tmp_path, capsys, factory, expected):
    config = write_config(tmp_path, factory)
    assert main(["check", str(config), "--graph"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_micro_batches_import_the_model_again_at_the_smaller_batch(tmp_path):
    from modelcut.training import load_training_setup
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["training"]["micro_batches"] = 2
    config.write_text(yaml.safe_dump(data))
    setup = load_training_setup(config)
    assert setup.batch == 4 and setup.graph["tokens"].shape == (2, 5)
    assert setup.data(0)["tokens"].shape == (4, 5)
    out = tmp_path / "run"
    assert main(["train", str(config), "--executor", "local", "--out", str(out)]) == 0
    losses = json.loads((out / "report.json").read_text())["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_an_onnx_model_trains_from_its_weights(tmp_path):
    pytest.importorskip("onnx")
    import io
    import sys
    import warnings
    sys.path.insert(0, str(tmp_path))
    (tmp_path / "zoo_tagger.py").write_text(FACTORY)
    try:
        import zoo_tagger
    finally:
        sys.path.remove(str(tmp_path))
    module, example = zoo_tagger.tagger()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, buffer, dynamo=False, opset_version=17)
    (tmp_path / "tagger.onnx").write_bytes(buffer.getvalue())
    (tmp_path / "onnx.yaml").write_text(yaml.safe_dump({
        "model": {"graph": "tagger.onnx", "loss": "cross_entropy"},
        "cluster": {"uniform": {"devices": 2}}, "partition": {"epsilon": 0.3},
        "training": {"steps": 5, "optimizer": "adam", "lr": 0.01}}))
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "onnx.yaml"), "--executor", "local",
                 "--out", str(out)]) == 0
    losses = json.loads((out / "report.json").read_text())["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
