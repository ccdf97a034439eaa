"""Dynamic and weight-only quantization of torch Linears.

- dynamic: `torch.ao.quantization.quantize_dynamic` with per-layer qconfigs (fbgemm int8 kernels). Weight
  observers carry the spec's ``quant_min/quant_max`` so bits, scheme and narrow range match the spec;
  activations use the full 8-bit range (`FullRangeDynamicLinear`), and nn.TransformerEncoderLayer is kept
  off its fast path, which cannot handle quantized Linears.
- weight-only: torchao `IntxUnpackedToInt8Tensor` weights (int2..int8), qparams from torchao's
  `choose_qparams_affine` with the spec's integer range.
`dynamic_raw` / `weight_only_raw` read the integers, scales and zero-points back (torch's convention).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from unicompress.specs import QuantizationSpec

from .quantization_records import RECORD_ATTR, LayerQuant, QuantRecord, quant_record


def _weight_observer_ao(lq: LayerQuant):
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

    qmin, qmax = lq.torch_range
    if lq.per_channel:
        scheme = torch.per_channel_symmetric if lq.symmetric else torch.per_channel_affine
        return PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=scheme, quant_min=qmin,
                                                  quant_max=qmax, ch_axis=0)
    scheme = torch.per_tensor_symmetric if lq.symmetric else torch.per_tensor_affine
    return MinMaxObserver.with_args(dtype=torch.qint8, qscheme=scheme, quant_min=qmin, quant_max=qmax)


def apply_dynamic(model: nn.Module, spec: QuantizationSpec, plan: dict[str, LayerQuant]) -> nn.Module:
    """quantize_dynamic on the planned Linears (one qconfig each); refuses nn.MultiheadAttention.out_proj."""
    from torch.ao.quantization import PlaceholderObserver, QConfig, quantize_dynamic

    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    # nn.MultiheadAttention reads out_proj.weight as a tensor; quantize_dynamic swaps it anyway when named
    # explicitly and the attention then fails (AttributeError), so refuse before touching the model
    refused = sorted(n for n in plan if isinstance(model.get_submodule(n), NonDynamicallyQuantizableLinear))
    if refused:
        raise NotImplementedError(f"quantize_dynamic cannot quantize nn.MultiheadAttention.out_proj ({refused[:3]}); "
                                  "exclude them, e.g. quantization.selector.exclude: ['*.self_attn.out_proj']")
    act = PlaceholderObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True)
    qconfigs = {name: QConfig(activation=act, weight=_weight_observer_ao(lq)) for name, lq in plan.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # quantize_dynamic is deprecated, still the fbgemm path
        model = quantize_dynamic(model, qconfigs, dtype=torch.qint8, inplace=True,
                                 mapping={nn.Linear: FullRangeDynamicLinear})
    done = {n for n, m in model.named_modules() if is_dynamic_linear(m)}
    missing = sorted(set(plan) - done)
    if missing:
        raise NotImplementedError(f"quantize_dynamic left these layers in float: {missing[:4]}")
    _keep_encoder_slow_path(model)
    setattr(model, RECORD_ATTR, QuantRecord("dynamic", "linear", plan, 8, False))
    return model


class FullRangeDynamicLinear(DynamicLinear):
    """torch.ao's dynamic Linear with 8-bit activations.

    `torch.ao.nn.quantized.dynamic.Linear.forward` calls fbgemm's ``quantized::linear_dynamic`` with
    ``reduce_range=True``, i.e. activations on [0, 127] (7 bits: a guard against 16-bit overflow on CPUs
    without VNNI). The spec's activation_bits 8 means [0, 255], as ONNX Runtime's DynamicQuantizeLinear
    does, so this subclass (swapped in through quantize_dynamic's documented `mapping` argument) calls the
    same native op with ``reduce_range=False``.
    """

    def forward(self, x):
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        return y.to(x.dtype)


def _slow_path_hook(module: nn.Module, args: Any) -> None:
    """A no-op pre-hook: its presence makes nn.TransformerEncoderLayer take its Python (slow) path."""
    return None


def _keep_encoder_slow_path(model: nn.Module) -> None:
    """nn.TransformerEncoderLayer's fast path reads ``linear1.weight.device``; a quantize_dynamic Linear's
    ``weight`` is a method, so the fast path raises AttributeError. The layer skips its fast path when a
    forward hook is attached (its own documented check) and the encoder when use_nested_tensor is False."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and any(is_dynamic_linear(m) for m in module.modules()):
            module.register_forward_pre_hook(_slow_path_hook)
        if isinstance(module, nn.TransformerEncoder) and any(is_dynamic_linear(m) for m in module.modules()):
            module.use_nested_tensor = False


def is_dynamic_linear(module: nn.Module) -> bool:
    """True for a torch.ao dynamic quantized Linear."""
    return isinstance(module, DynamicLinear)


def dynamic_raw(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{layer: (int weight [out, in], scales, zero points)} of the dynamic Linears, in torch's convention."""
    out = {}
    for name, module in model.named_modules():
        if not is_dynamic_linear(module):
            continue
        w = module.weight()
        q = torch.int_repr(w).numpy().astype(np.int64)
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out[name] = (q, w.q_per_channel_scales().numpy(), w.q_per_channel_zero_points().numpy())
        else:
            out[name] = (q, np.array([w.q_scale()]), np.array([w.q_zero_point()]))
    return out


# ---- weight-only: torchao IntxUnpackedToInt8Tensor ------------------------------------------------------
def apply_weight_only(model: nn.Module, spec: QuantizationSpec, plan: dict[str, LayerQuant]) -> nn.Module:
    """Replace each planned Linear's weight by a torchao IntxUnpackedToInt8Tensor on the spec's grid."""
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor)

    _refuse_tied(model, plan)
    for name, lq in plan.items():
        module = model.get_submodule(name)
        w = module.weight.detach().float()
        block = (1, w.shape[1]) if lq.per_channel else tuple(w.shape)
        mapping = MappingType.SYMMETRIC if lq.symmetric else MappingType.ASYMMETRIC
        dtype = getattr(torch, f"int{lq.bits}")
        qmin, qmax = lq.torch_range
        # torchao's own choose_qparams with the spec's integer range: IntxWeightOnlyConfig would use the
        # full signed range [-2^(b-1), 2^(b-1)-1] (scale amax/127.5), not the narrow range of the spec
        scale, zp = choose_qparams_affine(w, mapping, block, dtype, quant_min=qmin, quant_max=qmax,
                                          eps=torch.finfo(torch.float32).eps, scale_dtype=torch.float32,
                                          zero_point_dtype=torch.int32)
        rows = w.shape[0] // block[0]
        tensor = IntxUnpackedToInt8Tensor.from_hp(
            w, block, dtype, mapping_type=mapping, intx_choose_qparams_algorithm=None,
            custom_scale=scale.reshape(rows, 1), custom_zero_point=zp.to(torch.int8).reshape(rows, 1))
        module.weight = nn.Parameter(tensor, requires_grad=False)
    setattr(model, RECORD_ATTR, QuantRecord("weight_only", "linear", plan))
    return model


def _refuse_tied(model: nn.Module, plan: dict[str, LayerQuant]) -> None:
    """Refuse, before any weight is replaced, a planned Linear whose weight is tied to another module's (a causal
    LM's lm_head and its input embedding, ``tie_word_embeddings``): giving it a new quantized parameter would
    untie them without a word (the embedding stays float, both matrices are stored, and a later
    ``tie_weights()`` would put the float matrix back into the head)."""
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append(f"{module_name}.{pname}" if module_name else pname)
    for name in plan:
        shared = [o for o in owners.get(id(model.get_submodule(name).weight), []) if o != f"{name}.weight"]
        if shared:
            raise NotImplementedError(
                f"{name}.weight is tied to {', '.join(shared)} (tie_word_embeddings): weight-only quantization would "
                f"untie them. Leave {name} in float (the default selection skips the classifier role), or untie "
                "the model first (config.tie_word_embeddings = False and a cloned weight) to quantize it alone")


def weight_only_raw(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{layer: (int weight [out, in], scales, zero points)} of the weight-only layers (torch's convention)."""
    out = {}
    for name in quant_record(model).layers:
        t = model.get_submodule(name).weight
        out[name] = (t.qdata.detach().numpy().astype(np.int64), t.scale.detach().float().numpy().reshape(-1),
                     t.zero_point.detach().numpy().astype(np.int64).reshape(-1))
    return out

