"""A one-block Transformer in numpy with a real backend, to test the planner and the judge without a framework.

The model: multi-head self-attention (Q/K/V/O with biases), a residual, an FFN pair (ReLU), a residual, mean
pooling and a classifier. The adapter discovers its structure, prunes by `ctx.plan` (unstructured, heads,
neurons; masked or removed) and can carry one deliberate bug (`mutation`) that the judge must catch:
  - "skip_attention": unstructured pruning leaves the attention projections dense (the TF MHA bug);
  - "unpaired": neuron masks zero ffn_in rows but leave ffn_out's columns (pruned on different axes);
  - "wrong_axis": neuron masks zero ffn_out's rows instead of its columns;
  - "no_removal": remove_pruned only zeroes the units (the model keeps its size);
  - "removes_wrong_columns": removal deletes ffn_out columns of other neurons than the ffn_in rows it deletes.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from unicompress.backend import Adapter, Capabilities, LayerInfo, LayerStats, Support, build_table
from unicompress.backend.types import AttentionInfo, FFNInfo, TransformerStructure, count_nonzero
from unicompress.fileio import atomic_write_bytes
from unicompress.specs import Granularity, LayerRole, PruningSpec
from unicompress.structure import assign_roles

NAMES = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.up", "mlp.down", "head")


def _init(hidden: int = 8, heads: int = 4, ffn: int = 16, labels: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"attn.wq": (hidden, hidden), "attn.wk": (hidden, hidden), "attn.wv": (hidden, hidden),
              "attn.wo": (hidden, hidden), "mlp.up": (ffn, hidden), "mlp.down": (hidden, ffn), "head": (labels, hidden)}
    w = {n: rng.normal(0, 0.5, size=s).astype(np.float32) for n, s in shapes.items()}
    w.update({f"{n}.bias": rng.normal(0, 0.1, size=s[0]).astype(np.float32) for n, s in shapes.items()})
    return w


@dataclass
class NumpyTransformer:
    weights: dict = field(default_factory=_init)
    num_heads: int = 4


class NumpyTransformerAdapter(Adapter):
    name = "numpy-transformer"
    framework_modules = ("numpy_transformer",)

    def __init__(self, mutation: str = ""):
        self.mutation = mutation

    def capabilities(self) -> Capabilities:
        return Capabilities(self.name, build_table([
            ("pruning", "granularity", ["unstructured", "neuron", "head"], Support.native),
            ("pruning", "criterion", ["magnitude"], Support.native),
            ("pruning", "scope", ["per_layer"], Support.native),
            ("pruning", "schedule.kind", ["one_shot"], Support.native),
            ("pruning", "norm", ["l2"], Support.native),
            ("pruning", "remove_pruned", [True], Support.native)]))

    def copy(self, model):
        return copy.deepcopy(model)

    def structure(self, model):
        w = model.weights
        d = w["attn.wq"].shape[0] // model.num_heads
        return TransformerStructure(w["attn.wo"].shape[0], 1,
                                    (AttentionInfo(0, "attn.wq", "attn.wk", "attn.wv", "attn.wo", model.num_heads, d),),
                                    (FFNInfo(0, "mlp.up", "mlp.down"),), classifier="head",
                                    architecture="numpy:block")

    def layers(self, model):
        raw = [LayerInfo(n, "linear", LayerRole.other, model.weights[n].shape) for n in NAMES]
        return assign_roles(raw, self.structure(model))

    def weights(self, model, names=None):
        return {n: model.weights[n].copy() for n in NAMES if names is None or n in names}

    def set_weights(self, model, weights):
        for n, w in weights.items():
            assert model.weights[n].shape == np.shape(w), (n, model.weights[n].shape, np.shape(w))
            model.weights[n] = np.asarray(w, np.float32)

    def run(self, model, inputs):
        w, h = model.weights, model.num_heads
        x = inputs["x"] if isinstance(inputs, dict) else inputs  # [B, T, D]
        lin = lambda t, n: t @ w[n].T + w[f"{n}.bias"]  # noqa: E731
        q, k, v = (lin(x, n) for n in ("attn.wq", "attn.wk", "attn.wv"))
        b, t, _ = x.shape
        d = q.shape[-1] // h
        q, k, v = (a.reshape(b, t, h, d).transpose(0, 2, 1, 3) for a in (q, k, v))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ctx = (p @ v).transpose(0, 2, 1, 3).reshape(b, t, h * d)
        x = x + lin(ctx, "attn.wo")
        x = x + lin(np.maximum(lin(x, "mlp.up"), 0), "mlp.down")
        return lin(x.mean(1), "head").astype(np.float32)

    def describe(self, model):
        roles = {layer.name: layer.role.value for layer in self.layers(model)}
        return [LayerStats(n, "linear", model.weights[n].shape, model.weights[n].size,
                           count_nonzero(model.weights[n]), role=roles[n]) for n in NAMES]

    def handlers(self):
        return {PruningSpec: self._prune}

    def export_onnx(self, model, path, example, opset=17):
        return atomic_write_bytes(path, b"numpy")

    # ---- pruning by the plan ----------------------------------------------------------------------
    def _prune(self, model, spec, data, ctx):
        plan, w = ctx.plan, model.weights
        if spec.granularity is Granularity.unstructured:
            for n in plan.selected:
                if self.mutation == "skip_attention" and n.startswith("attn."):
                    continue
                k = int(round(spec.sparsity * w[n].size))
                order = np.argsort(np.abs(w[n]).reshape(-1), kind="stable")
                flat = w[n].reshape(-1).copy()
                flat[order[:k]] = 0
                w[n] = flat.reshape(w[n].shape)
            return model
        if spec.granularity is Granularity.neuron:
            for f in plan.ffn:
                up, down = w[f.ffn_in], w[f.ffn_out]
                k = int(round(spec.sparsity * up.shape[0]))
                drop = np.sort(np.argsort(np.linalg.norm(up, axis=1), kind="stable")[:k])
                keep = np.setdiff1d(np.arange(up.shape[0]), drop)
                if spec.remove_pruned and self.mutation != "no_removal":
                    cols = keep if self.mutation != "removes_wrong_columns" else np.arange(len(keep))
                    w[f.ffn_in], w[f"{f.ffn_in}.bias"] = up[keep], w[f"{f.ffn_in}.bias"][keep]
                    w[f.ffn_out] = down[:, cols]
                else:
                    up[drop] = 0
                    w[f"{f.ffn_in}.bias"][drop] = 0
                    if self.mutation == "wrong_axis":
                        down[drop[drop < down.shape[0]]] = 0
                    elif self.mutation != "unpaired":
                        down[:, drop] = 0
            for n in plan.rows:  # lone Linears lose output rows (and their biases)
                k = int(round(spec.sparsity * w[n].shape[0]))
                drop = np.argsort(np.linalg.norm(w[n], axis=1), kind="stable")[:k]
                w[n][drop] = 0
                w[f"{n}.bias"][drop] = 0
            return model
        for a in plan.attention:
            d = a.head_dim
            q, k_, v, o = (w[n] for n in (a.query, a.key, a.value, a.output))
            score = sum((x.reshape(a.num_heads, d, -1) ** 2).sum((1, 2)) for x in (q, k_, v)) + \
                (o.reshape(o.shape[0], a.num_heads, d) ** 2).sum((0, 2))
            n_drop = int(round(spec.sparsity * a.num_heads))
            drop = np.sort(np.argsort(score, kind="stable")[:n_drop])
            rows = np.concatenate([np.arange(h * d, (h + 1) * d) for h in drop]) if n_drop else np.array([], int)
            keep = np.setdiff1d(np.arange(q.shape[0]), rows)
            if spec.remove_pruned and self.mutation != "no_removal":
                for n in (a.query, a.key, a.value):
                    w[n], w[f"{n}.bias"] = w[n][keep], w[f"{n}.bias"][keep]
                w[a.output] = o[:, keep]
                model.num_heads = a.num_heads - n_drop
            else:
                for n in (a.query, a.key, a.value):
                    w[n][rows] = 0
                    w[f"{n}.bias"][rows] = 0
                o[:, rows] = 0
        return model


def probe(batch: int = 4, seq: int = 5, hidden: int = 8, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, seq, hidden)).astype(np.float32)


def build(backend: str = "", seed: int = 0) -> NumpyTransformer:
    """A recipe's `model: {factory: "numpy_transformer:build"}`."""
    return NumpyTransformer(_init(seed=seed))
