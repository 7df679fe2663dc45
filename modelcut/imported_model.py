"""`model: {torch: "package.module:factory"}`: find the factory, import its module through
torch.export, and give training what a builder gives it (graph, batch, data, weights).

The factory returns (module, example_inputs). The module is looked up in `model.folder` (the
config's folder by default) first, then on sys.path. Training starts from the module's own
weights; data is drawn like the example inputs (autodiff/models/imported.py); a micro-batch's
graph is imported again on the first 1/m of each example input.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable

from modelcut.config import Config, ConfigError, TorchModel


def load_factory(spec: str, folder: str | None, source: str) -> Callable:
    """The callable `spec` ("package.module:factory") names."""
    module_name, _, attr = spec.partition(":")
    where = f"{folder}, then sys.path" if folder else "sys.path"
    if folder:
        sys.path.insert(0, folder)          # for this one import
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError([f"{source}: model.torch: cannot import {module_name!r} (searched "
                           f"{where}): {exc}"]) from None
    finally:
        if folder and sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError([f"{source}: model.torch: module {module_name!r} has no callable "
                           f"{attr!r}"])
    return factory


def call_factory(config: Config, source: str):
    """(module, example_inputs as a tuple) from the config's factory, checked."""
    import torch

    model: TorchModel = config.model
    result = load_factory(model.torch, model.folder, source)()
    if not (isinstance(result, tuple) and len(result) == 2
            and isinstance(result[0], torch.nn.Module)):
        raise ConfigError([f"{source}: model.torch: {model.torch}() must return (module, "
                           f"example_inputs), got {type(result).__name__}"])
    module, inputs = result
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not inputs or not all(isinstance(x, torch.Tensor) and x.dim() >= 1 for x in inputs):
        raise ConfigError([f"{source}: model.torch: example_inputs must be tensors with a "
                           "batch axis"])
    if config.training.dtype is not None:
        dtype = getattr(torch, config.training.dtype)
        module = module.to(dtype)
        inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
    return module, inputs


def import_config_model(config: Config, source: str, micro_batches: int = 1):
    """(ImportedModel of the full batch, ImportedModel of one micro-batch)."""
    from autodiff.torch_import import TorchImportError, import_torch

    module, inputs = call_factory(config, source)
    batch = inputs[0].shape[0]
    if any(x.shape[0] != batch for x in inputs) or batch % micro_batches:
        raise ConfigError([f"{source}: training.micro_batches: expected a divisor of the "
                           f"example inputs' batch axis ({batch}), got {micro_batches}"])
    try:
        full = import_torch(module, inputs)
        part = tuple(x[:batch // micro_batches] for x in inputs)
        return full, (full if micro_batches == 1 else import_torch(module, part))
    except TorchImportError as exc:
        raise ConfigError([f"{source}: model.torch: {exc}"]) from None


def imported_loss_graph(config: Config):
    """The forward graph with its training loss (what `graph`, `partition` and `compare`
    work on, as a builder's graph ends in its loss)."""
    from autodiff.models.imported import with_loss

    imported, _ = import_config_model(config, str(config.name))
    return with_loss(imported.graph, config.model.loss)


def imported_parts(config: Config, source: str):
    """(family, micro-batch loss graph, batch, data stream, initial params) for training a
    `model.torch` or an ONNX `model.graph`."""
    from autodiff.models.imported import imported_data, with_loss

    m = config.training.micro_batches
    if isinstance(config.model, TorchModel):
        full, part = import_config_model(config, source, m)
    elif m != 1:
        raise ConfigError([f"{source}: training.micro_batches: an ONNX model's batch is fixed "
                           "by the file; expected 1"])
    else:
        from autodiff.onnx_import import import_onnx
        full = part = import_onnx(config.model.graph, dims=config.model.dims)
    loss = config.model.loss
    full_graph, graph = with_loss(full.graph, loss), with_loss(part.graph, loss)
    data = imported_data(full.inputs, full_graph, config.training.seed or 0,
                         fresh=config.model.data == "fresh")
    family = "torch" if isinstance(config.model, TorchModel) else "onnx"
    return family, graph, full.inputs[0].shape[0], data, dict(part.params)
