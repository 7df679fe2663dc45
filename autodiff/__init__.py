"""autodiff: a computational-graph IR with cost annotations and automatic differentiation.

Reverse mode is a graph transformation (gradients are graph nodes), so gradient graphs can
be partitioned, executed, and differentiated again.
"""
from autodiff.ir import FLOAT_DTYPES, ITEMSIZE, SOURCE_OPS, Graph, GraphError, Node
from autodiff.trace import Tensor, Tracer, TracingError, trace
from autodiff.reverse import backward, vjp
from autodiff.api import check_grad, grad, jvp, value_and_grad
from autodiff import numpy

__all__ = [
    "FLOAT_DTYPES", "ITEMSIZE", "SOURCE_OPS", "Graph", "GraphError", "Node", "Tensor", "Tracer",
    "TracingError", "trace", "backward", "vjp", "check_grad", "grad", "jvp", "value_and_grad",
    "numpy",
]
