"""ONNX operators as torch functions, for :mod:`onnxopt.steps.distill.torch_graph`.

Each entry of :data:`OPS` takes the node's inputs (torch tensors, ``None`` for an omitted
optional input), its attributes (a dict) and the model's opset, and returns its outputs. The
set covers what exporters emit for CNNs and transformer encoders (PyTorch's TorchScript and
dynamo exporters, tf2onnx, Paddle): convolutions, pooling, normalizations, element-wise
math, shape arithmetic, indexing and resizing. What is missing makes the conversion fail
before any training, naming the operator.
"""

from __future__ import annotations

from onnxopt.steps.distill import ops_layers, ops_math, ops_shape
from onnxopt.steps.distill.optable import DTYPES, OPS, Unsupported

#: the modules whose functions fill :data:`OPS` when imported
MODULES = (ops_math, ops_layers, ops_shape)

__all__ = ["DTYPES", "MODULES", "OPS", "Unsupported"]
