"""Model builders (forward loss graphs built abstractly), parameter init and synthetic data.

`BUILDERS[family](**sizes)` returns the forward Graph whose single output is the scalar loss;
`init_params(graph, seed)` materializes its parameters; `make_data(graph, family, seed)`
gives a step -> feeds function whose targets are learnable.
"""
from autodiff.models.data import make_data
from autodiff.models.gpt import gpt
from autodiff.models.init import init_param, init_params
from autodiff.models.layers import ModelError
from autodiff.models.lstm import lstm
from autodiff.models.mlp import mlp
from autodiff.models.resnet import resnet

BUILDERS = {"mlp": mlp, "gpt": gpt, "lstm": lstm, "resnet": resnet}

__all__ = ["BUILDERS", "ModelError", "gpt", "init_param", "init_params", "lstm", "make_data",
           "mlp", "resnet"]
