"""A small but real backend over numpy models, to test the core's orchestration without a framework."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unicompress.backend import Adapter, Capabilities, LayerInfo, LayerStats, Support, build_table
from unicompress.fileio import atomic_write_bytes
from unicompress.specs import LayerRole, PruningSpec


@dataclass
class NumpyMLP:
    """y = relu(x W1^T) W2^T; weights in [out, in]."""

    weights: dict = field(default_factory=lambda: {
        "ffn.in": np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32),
        "ffn.out": np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)})


class NumpyAdapter(Adapter):
    name = "numpy-test"
    framework_modules = ("test_core_api", "numpy_adapter")

    def __init__(self, fail_after_change: bool = False):
        self.fail_after_change = fail_after_change

    def capabilities(self) -> Capabilities:
        return Capabilities(self.name, build_table([
            ("pruning", "granularity", ["unstructured"], Support.native),
            ("pruning", "criterion", ["magnitude"], Support.native),
            ("pruning", "scope", ["per_layer"], Support.native),
            ("pruning", "schedule.kind", ["one_shot"], Support.native)]))

    def copy(self, model):
        return copy.deepcopy(model)

    def layers(self, model):
        roles = {"ffn.in": LayerRole.ffn_in, "ffn.out": LayerRole.ffn_out}
        return [LayerInfo(n, "linear", roles[n], w.shape) for n, w in model.weights.items()]

    def weights(self, model, names=None):
        return {n: w.copy() for n, w in model.weights.items() if names is None or n in names}

    def set_weights(self, model, weights):
        model.weights.update({n: np.asarray(w, np.float32) for n, w in weights.items()})

    def run(self, model, inputs):
        x = inputs["x"] if isinstance(inputs, dict) else inputs
        return np.maximum(x @ model.weights["ffn.in"].T, 0) @ model.weights["ffn.out"].T

    def describe(self, model):
        return [LayerStats(n, "linear", w.shape, w.size, int((w != 0).sum())) for n, w in model.weights.items()]

    def handlers(self):
        return {PruningSpec: self._prune}

    def _prune(self, model, spec, data, ctx):
        from unicompress.reference import magnitude_mask

        for layer in spec.selector.select(self.layers(model)):
            model.weights[layer.name] = model.weights[layer.name] * magnitude_mask(model.weights[layer.name],
                                                                                   spec.sparsity)
            if self.fail_after_change:
                raise RuntimeError("simulated failure in the middle of a stage")
        ctx.log("sparsity", 0, spec.sparsity)
        return model

    def export_onnx(self, model, path, example, opset=17):
        return atomic_write_bytes(Path(path), b"not onnx; the numpy test backend writes raw bytes")
