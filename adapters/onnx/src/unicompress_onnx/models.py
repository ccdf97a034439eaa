"""The zoo models as ONNX graphs built with `onnx.helper` from the core's neutral weights (opset 17, dynamic axes).

``tiny-bert``/``minilm-l6`` follow `unicompress.zoo.bert`, ``tiny-vit`` `unicompress.zoo.vit`. Encoder Linears are
MatMul + Add on a ``<module>.weight`` initializer in MatMul's [in, out] layout, pooler and classifier Gemm(transB=1),
nodes named by TorchScript scope paths. ``user-encoder`` is tiny-bert as `torch.onnx.export` (TorchScript) writes it:
anonymous MatMul weights (``onnx::MatMul_<n>``), so its layers are named from the nodes.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from unicompress import zoo

OPSET = 17


class GraphBuilder:
    """Collects nodes and initializers; every node is named ``/<scope>/<Op>_<n>``."""

    def __init__(self, weights: dict[str, np.ndarray], anonymous: bool = False):
        self.weights, self.nodes, self.inits, self._n, self.anonymous = weights, [], [], 0, anonymous

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op: str, inputs: list[str], scope: str = "", **attrs: Any) -> str:
        self._n += 1
        out = f"{scope}/{op}_{self._n}_output"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{scope}/{op}_{self._n}", **attrs))
        return out

    def ints(self, *values: int) -> str:
        self._n += 1
        return self.const(f"const_{self._n}", list(values), np.int64)

    def linear(self, x: str, module: str, gemm: bool = False) -> str:
        """x W^T + b of the neutral Linear `module` (weights [out, in])."""
        w, b = self.weights[f"{module}.weight"], self.weights[f"{module}.bias"]
        scope = scope_of(module)
        if gemm:
            return self.op("Gemm", [x, self.const(f"{module}.weight", w), self.const(f"{module}.bias", b)], scope,
                           transB=1)
        self._n += 1
        y = self.op("MatMul", [x, self.const(f"onnx::MatMul_{self._n}" if self.anonymous else f"{module}.weight", w.T)],
                    scope)
        return self.op("Add", [y, self.const(f"{module}.bias", b)], scope)

    def layernorm(self, x: str, module: str, eps: float) -> str:
        return self.op("LayerNormalization", [x, self.const(f"{module}.weight", self.weights[f"{module}.weight"]),
                                              self.const(f"{module}.bias", self.weights[f"{module}.bias"])],
                       scope_of(module), axis=-1, epsilon=eps)

    def gelu(self, x: str, module: str) -> str:
        """0.5 x (1 + erf(x / sqrt 2)): the exact GELU."""
        scope = scope_of(module)
        e = self.op("Erf", [self.op("Div", [x, self.const(f"{module}.sqrt2", math.sqrt(2.0))], scope)], scope)
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [e, self.const(f"{module}.one", 1.0)], scope)], scope),
                               self.const(f"{module}.half", 0.5)], scope)

    def attention(self, x: str, prefix: str, heads: int, head_dim: int, mask: Optional[str]) -> str:
        """Multi-head self-attention of block `prefix` (``<prefix>.attention.self.query`` ...), up to the output."""
        scope = scope_of(f"{prefix}.attention.self")
        split = self.ints(0, 0, heads, head_dim)
        q, k, v = (self.op("Reshape", [self.linear(x, f"{prefix}.attention.self.{n}"), split], scope)
                   for n in ("query", "key", "value"))
        scores = self.op("MatMul", [self.op("Transpose", [q], scope, perm=[0, 2, 1, 3]),
                                    self.op("Transpose", [k], scope, perm=[0, 2, 3, 1])], scope)
        scores = self.op("Mul", [scores, self.const(f"{prefix}.attention.scaling", 1.0 / math.sqrt(head_dim))], scope)
        if mask is not None:
            scores = self.op("Add", [scores, mask], scope)
        probs = self.op("Softmax", [scores], scope, axis=-1)
        ctx = self.op("MatMul", [probs, self.op("Transpose", [v], scope, perm=[0, 2, 1, 3])], scope)
        return self.op("Reshape", [self.op("Transpose", [ctx], scope, perm=[0, 2, 1, 3]), self.ints(0, 0, -1)], scope)

    def model(self, inputs: list[Any], logits: str, num_labels: int, name: str) -> Any:
        out = helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", num_labels])
        graph = helper.make_graph(self.nodes, name, inputs, [out], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="unicompress")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def scope_of(module: str) -> str:
    """The TorchScript exporter's scope path of a module (``bert.encoder.layer.0`` -> ``/bert/encoder/layer.0``)."""
    return "/" + re.sub(r"\.(\d+)", r"!\1", module).replace(".", "/").replace("!", ".")


def bert_graph(cfg: Any, weights: dict[str, np.ndarray], anonymous: bool = False) -> Any:
    """The zoo BERT encoder with its classification head (`unicompress.zoo.bert` semantics); `anonymous`
    names the MatMul weights as the TorchScript exporter does."""
    g = GraphBuilder(weights, anonymous)
    emb = "bert.embeddings"
    ids, mask = "input_ids", "attention_mask"
    length = g.op("Squeeze", [g.op("Shape", [ids], "/bert/embeddings", start=1, end=2)], "/bert/embeddings")
    positions = g.op("Range", [g.const("zero", 0, np.int64), length, g.const("one", 1, np.int64)], "/bert/embeddings")
    types = g.op("ConstantOfShape", [g.op("Shape", [ids], "/bert/embeddings")], "/bert/embeddings",
                 value=numpy_helper.from_array(np.zeros(1, np.int64)))
    tables = (("word_embeddings", ids), ("position_embeddings", positions), ("token_type_embeddings", types))
    parts = [g.op("Gather", [g.const(f"{emb}.{t}.weight", weights[f"{emb}.{t}.weight"]), i], f"/bert/embeddings/{t}")
             for t, i in tables]
    x = g.layernorm(g.op("Add", [g.op("Add", parts[:2], "/bert/embeddings"), parts[2]], "/bert/embeddings"),
                    f"{emb}.LayerNorm", cfg.layer_norm_eps)
    # (1 - mask) * float32 min, as Hugging Face's eager attention adds it: [B, 1, 1, L]
    keep = g.op("Cast", [mask], "/bert", to=TensorProto.FLOAT)
    additive = g.op("Mul", [g.op("Sub", [g.const("bert.one", 1.0), keep], "/bert"),
                            g.const("bert.mask_min", np.finfo(np.float32).min)], "/bert")
    additive = g.op("Unsqueeze", [additive, g.ints(1, 2)], "/bert")
    for i in range(cfg.num_hidden_layers):
        p = zoo.bert.layer_prefix(i)
        a = g.linear(g.attention(x, p, cfg.num_attention_heads, cfg.head_dim, additive), f"{p}.attention.output.dense")
        x = g.layernorm(g.op("Add", [a, x], scope_of(p)), f"{p}.attention.output.LayerNorm", cfg.layer_norm_eps)
        f = g.linear(g.gelu(g.linear(x, f"{p}.intermediate.dense"), f"{p}.intermediate"), f"{p}.output.dense")
        x = g.layernorm(g.op("Add", [f, x], scope_of(p)), f"{p}.output.LayerNorm", cfg.layer_norm_eps)
    first = g.op("Gather", [x, g.const("cls_index", 0, np.int64)], "/bert/pooler", axis=1)
    pooled = g.op("Tanh", [g.linear(first, "bert.pooler.dense", gemm=True)], "/bert/pooler")
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in (ids, mask)]
    return g.model(inputs, g.linear(pooled, "classifier", gemm=True), cfg.num_labels, "bert")


def vit_graph(cfg: Any, weights: dict[str, np.ndarray]) -> Any:
    """The zoo ViT (`unicompress.zoo.vit` semantics): flattened patches, CLS token, pre-LayerNorm blocks."""
    g = GraphBuilder(weights)
    px, p, grid, h = "pixel_values", cfg.patch_size, cfg.image_size // cfg.patch_size, cfg.hidden_size
    patches = g.op("Transpose", [g.op("Reshape", [px, g.ints(-1, grid, p, grid, p)], "/vit/embeddings")],
                   "/vit/embeddings", perm=[0, 1, 3, 2, 4])
    patches = g.op("Reshape", [patches, g.ints(-1, grid * grid, p * p)], "/vit/embeddings")
    x = g.linear(patches, "vit.embeddings.patch_embeddings")
    rows = g.op("Concat", [g.op("Shape", [px], "/vit/embeddings", start=0, end=1), g.ints(1, h)], "/vit/embeddings",
                axis=0)
    cls = g.op("Expand", [g.const("vit.embeddings.cls_token", weights["vit.embeddings.cls_token"]), rows],
               "/vit/embeddings")
    x = g.op("Add", [g.op("Concat", [cls, x], "/vit/embeddings", axis=1),
                     g.const("vit.embeddings.position_embeddings", weights["vit.embeddings.position_embeddings"])],
             "/vit/embeddings")
    for i in range(cfg.num_hidden_layers):
        pre = f"vit.encoder.layer.{i}"
        a = g.attention(g.layernorm(x, f"{pre}.layernorm_before", cfg.layer_norm_eps), pre, cfg.num_attention_heads,
                        cfg.head_dim, None)
        x = g.op("Add", [x, g.linear(a, f"{pre}.attention.output.dense")], scope_of(pre))
        f = g.gelu(g.linear(g.layernorm(x, f"{pre}.layernorm_after", cfg.layer_norm_eps), f"{pre}.intermediate.dense"),
                   f"{pre}.intermediate")
        x = g.op("Add", [x, g.linear(f, f"{pre}.output.dense")], scope_of(pre))
    first = g.op("Gather", [g.layernorm(x, "vit.layernorm", cfg.layer_norm_eps), g.const("cls_index", 0, np.int64)],
                 "/vit", axis=1)
    image = helper.make_tensor_value_info(px, TensorProto.FLOAT, ["batch", cfg.image_size, cfg.image_size])
    return g.model([image], g.linear(first, "classifier", gemm=True), cfg.num_labels, "vit")


def build_model(name: str, seed: int = 0, num_labels: Optional[int] = None,
                weights: Optional[dict[str, np.ndarray]] = None) -> Any:
    """A zoo model ("tiny-bert", "tiny-vit", "minilm-l6", "user-encoder") as an onnx.ModelProto with its weights.

    Example: ``run(build_model("tiny-bert"), zoo.inputs_for("tiny-bert", zoo.config_for("tiny-bert")))``.
    """
    cfg = zoo.config_for(name, num_labels)
    weights = zoo.weights_for(name, cfg, seed) if weights is None else weights
    return vit_graph(cfg, weights) if name == "tiny-vit" else bert_graph(cfg, weights, name == "user-encoder")
