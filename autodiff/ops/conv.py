"""Convolution and pooling ops on NCHW tensors."""
from __future__ import annotations

OPS = []
