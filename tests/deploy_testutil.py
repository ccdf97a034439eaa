"""Tiny ONNX files for the deploy tests (onnx.helper; no framework) and a third runtime built on
onnx's own ReferenceEvaluator, registered the way an adapter contributes its native runtime."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 32  # input features of the float models
CLASSES = 8


def _save(nodes, inits, inputs, outputs, path: Path) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _float_io():
    return ([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])])


def wide_classifier(path: Path, hidden: int = 8192, seed: int = 0) -> Path:
    """logits = x @ W1 @ W2 through a `hidden`-wide layer (linear: the slow FP32 baseline)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(WIDTH, hidden)) / np.sqrt(WIDTH)).astype(np.float32)
    w2 = (rng.normal(size=(hidden, CLASSES)) / np.sqrt(hidden)).astype(np.float32)
    return _save([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["logits"])],
                 {"w1": w1, "w2": w2}, *_float_io(), path)


def narrow_equivalent(path: Path, hidden: int = 8192, seed: int = 0, width: int = 512) -> Path:
    """The same function as `wide_classifier(hidden, seed)` through a `width`-wide layer: [W1 W2 | 0] @ [I; 0]."""
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(WIDTH, hidden)) / np.sqrt(WIDTH)).astype(np.float32)
    w2 = (rng.normal(size=(hidden, CLASSES)) / np.sqrt(hidden)).astype(np.float32)
    m1 = np.zeros((WIDTH, width), np.float32)
    m1[:, :CLASSES] = w1 @ w2
    m2 = np.zeros((width, CLASSES), np.float32)
    m2[:CLASSES] = np.eye(CLASSES, dtype=np.float32)
    return _save([helper.make_node("MatMul", ["x", "m1"], ["h"]), helper.make_node("MatMul", ["h", "m2"], ["logits"])],
                 {"m1": m1, "m2": m2}, *_float_io(), path)


def sliced_wrong(path: Path) -> Path:
    """A nearly free graph with the right output shape and the wrong answer: logits = x[:, :CLASSES]."""
    inits = {"s": np.array([0], np.int64), "e": np.array([CLASSES], np.int64), "a": np.array([1], np.int64)}
    return _save([helper.make_node("Slice", ["x", "s", "e", "a"], ["logits"])], inits, *_float_io(), path)


def unknown_op(path: Path) -> Path:
    """A valid graph of an operator no runtime knows (a pair that cannot load)."""
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["logits"], domain="com.example")], "g",
                              *_float_io())
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))
    return path


def token_encoder(path: Path, vocab: int = 1000, dim: int = 16, seed: int = 0) -> Path:
    """input_ids/attention_mask (int64) -> masked mean of embeddings -> projection: an 'embedding' output."""
    rng = np.random.default_rng(seed)
    inits = {"emb": rng.normal(size=(vocab, dim)).astype(np.float32),
             "proj": rng.normal(size=(dim, dim)).astype(np.float32), "axes": np.array([1], np.int64),
             "last": np.array([-1], np.int64)}
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["tok"]),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
             helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
             helper.make_node("ReduceSum", ["masked", "axes"], ["summed"], keepdims=0),
             helper.make_node("ReduceSum", ["maskf", "axes"], ["count"], keepdims=1),
             helper.make_node("Div", ["summed", "count"], ["pooled"]),
             helper.make_node("MatMul", ["pooled", "proj"], ["embedding"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "length"])
              for n in ("input_ids", "attention_mask")]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])]
    return _save(nodes, inits, inputs, outputs, path)


class ReferenceModel:
    """onnx.reference.ReferenceEvaluator behind the runtime protocol (loads .onnx, runs in numpy)."""

    runtime = "onnx-reference"

    def __init__(self, path: Path, threads: int):
        from onnx.reference import ReferenceEvaluator

        self.model = onnx.load(str(path))
        self.evaluator = ReferenceEvaluator(self.model)
        self.detail = "onnx.reference (numpy), single-threaded"

    def get_inputs(self):
        from unicompress.deploy import InputSpec

        types = {TensorProto.INT64: "tensor(int64)", TensorProto.FLOAT: "tensor(float)"}
        return [InputSpec(i.name, tuple(d.dim_value or None for d in i.type.tensor_type.shape.dim),
                          types[i.type.tensor_type.elem_type]) for i in self.model.graph.input]

    def output_names(self):
        return [o.name for o in self.model.graph.output]

    def run(self, feeds: Mapping[str, np.ndarray]):
        return [np.asarray(o) for o in self.evaluator.run(None, dict(feeds))]


def load(path: Path, threads: int = 1) -> ReferenceModel:
    return ReferenceModel(path, threads)


def version() -> str:
    return onnx.__version__
