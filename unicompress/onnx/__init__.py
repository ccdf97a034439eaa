"""Checks of exported ONNX graphs and runs in ONNX Runtime: the one runtime every backend is measured on.

`inspect` reads a graph (per-initializer sparsity and bit widths, QDQ nodes with their axis,
factorised MatMul pairs, sizes); `runtime` runs it with a fixed thread count and compares it
with the framework's outputs. Both need only onnx, onnxruntime and numpy.
"""
from .inspect import (GraphSummary, InitializerInfo, QDQNode, check_model, factorised_matmuls, initializers,
                      is_quantized, qdq_nodes, summarize)
from .runtime import OutputComparison, compare_outputs, make_session, run_onnx

__all__ = ["GraphSummary", "InitializerInfo", "QDQNode", "check_model", "factorised_matmuls", "initializers",
           "is_quantized", "qdq_nodes", "summarize", "OutputComparison", "compare_outputs", "make_session",
           "run_onnx"]
