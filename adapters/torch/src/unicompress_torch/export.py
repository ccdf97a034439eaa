"""ONNX and native export of float (pruned / factorised) torch models, written atomically.

ONNX goes through `torch.onnx.export(..., dynamo=False)`, the TorchScript exporter: in torch 2.13 the
default `dynamo=True` path needs `onnxscript`, which the stack does not ship (it fails with
ModuleNotFoundError), while the TorchScript exporter gives clean graphs with dynamic axes for
HF BERT, the zoo ViT and nn.TransformerEncoder. Inputs keep their names (``input_ids``,
``attention_mask``, ``pixel_values`` ...), the output is ``logits``, batch (and sequence) axes are
dynamic. Constant folding is off by default so each weight initializer is the model's own tensor (pruned
zeros visible); the quantized export turns it on to get [in, out] weight initializers to rewrite. The
warnings the export raises about these deliberate choices are silenced inside the call (`SILENCED_WARNINGS`).

Native export: ``model.safetensors`` (the state dict, no pickle) and ``config.json`` (the model's
config and the unicompress metadata: zoo name, pruned heads, per-layer FFN sizes, low-rank layers);
`load_native` rebuilds zoo models from it, removed heads, neurons and factorised layers included.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from unicompress.backend.types import Inputs
from unicompress.fileio import atomic_directory, atomic_path
from unicompress.zoo.vit import ViTConfig

from . import layers as L
from . import removal
from .training import TENSOR_KEY, call_model, logits_of, to_torch_inputs


class LogitsWrapper(nn.Module):
    """Positional inputs in a fixed name order -> the model's logits (what ONNX export traces)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return logits_of(call_model(self.model, dict(zip(self.names, args))))


def _dynamic_axes(inputs: dict[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    """Batch dynamic everywhere; sequence too for token inputs (the known names, or any integer [B, L])."""
    axes: dict[str, dict[int, str]] = {"logits": {0: "batch"}}
    for name, t in inputs.items():
        axes[name] = {0: "batch"}
        tokens = name in ("input_ids", "attention_mask", "token_type_ids", "position_ids") and t.dim() >= 2
        if tokens or (not t.is_floating_point() and t.dim() == 2):
            axes[name][1] = "sequence"
    return axes


#: warnings the export itself raises about choices made here on purpose (message regexes, matched at the start):
#: the tracer's frozen shape checks (HF's padding-length test, MHA's embed-dim asserts: they hold for every
#: batch and length, and verify_onnx / the tests run other shapes), the opset-11 note that advanced indexing
#: becomes several ONNX ops, and the notice that the TorchScript exporter is the legacy one (see above)
SILENCED_WARNINGS = (
    (r"Exporting aten::index operator of advanced indexing", UserWarning),
    (r"You are using the legacy TorchScript-based ONNX export", DeprecationWarning),
)


def export_onnx(model: nn.Module, path: Path, example: Inputs, opset: int = 17,
                constant_folding: bool = False) -> Path:
    """Write `model` as ONNX at `path` (atomically) and return the path: the adapter's one float exporter.

    `constant_folding` folds the weight transposes into [in, out] initializers (what the QDQ rewrite of a
    quantized model's float twin replaces); off by default so every weight stays the model's own tensor.
    Example: ``export_onnx(bert, Path("m.onnx"), {"input_ids": ids, "attention_mask": mask})``.
    """
    path = Path(path)
    inputs = to_torch_inputs(example)
    names = list(inputs)
    onnx_names = ["input" if n == TENSOR_KEY else n for n in names]
    wrapper = LogitsWrapper(model, names).eval()
    axes = _dynamic_axes(dict(zip(onnx_names, inputs.values())))
    # grad stays enabled: under no_grad nn.TransformerEncoderLayer takes its fused fast path
    # (aten::_transformer_encoder_layer_fwd), which has no ONNX symbolic
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        for message, category in SILENCED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        torch.onnx.export(wrapper, tuple(inputs.values()), str(tmp), dynamo=False, input_names=onnx_names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=constant_folding)
    return path


def verify_onnx(model: nn.Module, path: Path, example: Inputs) -> float:
    """Run the ONNX file in ONNX Runtime on `example`; returns the max |ORT - torch| of the logits."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    feeds = {("input" if k == TENSOR_KEY else k): v.numpy() for k, v in to_torch_inputs(example).items()}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], feeds)[0]
    with torch.no_grad():
        want = logits_of(call_model(model.eval(), to_torch_inputs(example))).numpy()
    return float(np.abs(got - want).max())


def _config_dict(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    if isinstance(cfg, ViTConfig):
        return {"model_type": "unicompress-vit", **dataclasses.asdict(cfg)}
    if hasattr(cfg, "to_dict"):
        return json.loads(json.dumps(cfg.to_dict(), default=str))
    return {}


def export_native(model: nn.Module, directory: Path, metadata: Optional[dict[str, Any]] = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` under `directory` (atomically, no pickle).

    Pruning hooks must have been made permanent (`pruning.make_permanent`); shared tensors are
    saved once by `safetensors.torch.save_model`.
    """
    from safetensors.torch import save_model

    directory = Path(directory)
    layer_shapes = {r.name: list(r.shape) for r in L.records(model)}
    info = {
        "format": "unicompress-torch/1",
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "zoo": getattr(model, "unicompress_zoo", None),
        "config": _config_dict(model),
        "low_rank_layers": sorted(n for n, m in model.named_modules() if isinstance(m, L.LowRankLinear)),
        "layer_shapes": layer_shapes,
        "pruned_heads": {str(k): v for k, v in getattr(model, "unicompress_pruned_heads", {}).items()},
        "intermediate_sizes": {str(k): v for k, v in getattr(model, "unicompress_intermediate_sizes", {}).items()},
        **(metadata or {}),
    }
    with atomic_directory(directory) as tmp:
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(info, indent=2, default=str))
    return directory


def load_native(directory: Path) -> nn.Module:
    """Rebuild a zoo model written by `export_native`, with its removed heads/neurons and low-rank layers.

    The zoo model is built at its original size, every Linear whose saved shape differs is replaced by
    one of the saved shape (a `LowRankLinear` where one was saved), head counts follow the new widths,
    and the safetensors state is loaded strictly. Models that are not from the zoo cannot be rebuilt
    from data alone: build the module yourself and `safetensors.torch.load_model` into it.
    """
    from safetensors.torch import load_file

    from .models import build_model

    directory = Path(directory)
    info = json.loads((directory / "config.json").read_text())
    if not info.get("zoo"):
        raise ValueError(f"{directory} holds a {info.get('class')} that is not a zoo model; build the module "
                         "yourself and load model.safetensors with safetensors.torch.load_model")
    model = build_model(info["zoo"], num_labels=info.get("config", {}).get("num_labels"))
    shapes = {k: tuple(v) for k, v in info["layer_shapes"].items()}
    for name in info.get("low_rank_layers", []):
        first, second = shapes[f"{name}.0"], shapes[f"{name}.1"]
        L.replace_module(model, name, L.LowRankLinear(nn.Linear(first[1], first[0], bias=False),
                                                      nn.Linear(second[1], second[0])))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name in shapes and tuple(module.weight.shape) != shapes[name]:
            out_f, in_f = shapes[name]
            L.replace_module(model, name, nn.Linear(in_f, out_f, bias=module.bias is not None))
    for module in model.modules():  # head counts follow the (possibly narrowed) query width
        if all(hasattr(module, a) for a in ("num_attention_heads", "query", "attention_head_size")):
            query = module.query[-1] if isinstance(module.query, L.LowRankLinear) else module.query
            module.num_attention_heads = query.out_features // module.attention_head_size
            if hasattr(module, "all_head_size"):
                module.all_head_size = query.out_features
    state = load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise KeyError(f"saved state does not fit the rebuilt model: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    model.unicompress_pruned_heads = {int(k): v for k, v in info.get("pruned_heads", {}).items()}
    model.unicompress_intermediate_sizes = {int(k): v for k, v in info.get("intermediate_sizes", {}).items()}
    removal.restore_heads(model)  # kept head ids and position-bias hooks of the removed heads
    return model.eval()
