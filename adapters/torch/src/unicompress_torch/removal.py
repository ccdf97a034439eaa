"""Physical removal of pruned attention heads and FFN neurons; every layer keeps its name, shapes shrink.

After `pruning.make_permanent` the pruned units are zero. Removal rebuilds the Linears (or transformers
`Conv1D`s) without them: FFN neurons lose their rows in ``ffn_in`` (and ``gate``) and their columns in
``ffn_out``; heads lose their rows in Q/K/V (the three parts of a packed projection) and their columns in
the output projection. The attention module is then told its new size: head-count attributes
(``num_attention_heads``, ``num_heads``, ``n_heads``), widths (``all_head_size``, ``inner_dim``, GPT-2's
``split_size``) and, under grouped-query attention, ``num_key_value_groups`` (pruning keeps the same number
of query heads in every K/V group, so ``repeat_kv`` stays right).

Families whose position bias is computed once for all heads and passed between layers (MPNet's encoder, T5's
first layer) get `HeadSubsetBias` hooks that hand each pruned attention only its kept heads' bias, and
hand the full bias on to the next layer. The kept original head ids are kept on the attention module
(``unicompress_head_ids``) so a second removal and ``config.pruned_heads`` speak of the original heads.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
from torch import nn

from unicompress.zoo.vit import ViTConfig

from . import layers as L
from .discovery import HEAD_REMOVAL_FAMILIES, family, is_conv1d

_HEADS_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
_WIDTH_ATTRS = ("all_head_size", "inner_dim", "split_size")


# ---- shrinking one layer ----------------------------------------------------------------------------------
def shrink(layer: nn.Module, index: torch.Tensor, dim: int) -> nn.Module:
    """A copy of a Linear / Conv1D keeping only `index` along `dim` of its neutral [out, in] weight
    (0: output rows and their bias, 1: input columns). Dtype, device and requires_grad are kept."""
    w = layer.weight.detach()
    conv = is_conv1d(layer)
    raw_dim = (1 - dim) if conv else dim  # Conv1D stores [in, out]
    index = index.to(w.device)
    kept = w.index_select(raw_dim, index).clone()
    bias = layer.bias.detach() if layer.bias is not None else None
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index)
    if conv:
        new = type(layer)(kept.shape[1], kept.shape[0])
    else:
        new = nn.Linear(kept.shape[1], kept.shape[0], bias=bias is not None)
    new = new.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(kept)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(layer.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    new.train(layer.training)
    return new


def _neutral(ref: Any) -> torch.Tensor:
    return ref.weight()


def _bias(module: nn.Module, rows: int) -> torch.Tensor:
    b = getattr(module, "bias", None)
    return b.detach() if b is not None else torch.zeros(rows)


# ---- FFN neurons -------------------------------------------------------------------------------------------
def remove_neurons(model: nn.Module, pair: Any) -> int:
    """Drop the zero neurons of one FFN pair (`pruning.FFNPair`); returns the neurons kept."""
    inputs = [pair.ffn_in] + ([pair.gate] if pair.gate is not None else [])
    alive = torch.zeros(_neutral(pair.ffn_in).shape[0], dtype=torch.bool)
    for ref in inputs:
        w = _neutral(ref)
        alive |= (w != 0).any(dim=1) | (_bias(ref.module, w.shape[0]) != 0)
    alive &= (_neutral(pair.ffn_out) != 0).any(dim=0)
    index = torch.nonzero(alive).reshape(-1)
    if index.numel() == 0:
        index = torch.tensor([0])  # keep one neuron: a zero-width Linear cannot run or export
    for ref in inputs:
        L.replace_module(model, ref.name, shrink(ref.module, index, 0))
    L.replace_module(model, pair.ffn_out.name, shrink(pair.ffn_out.module, index, 1))
    return int(index.numel())


# ---- attention heads -------------------------------------------------------------------------------------
def _alive_heads(h: Any) -> torch.Tensor:
    d = h.head_dim
    q = _neutral(h.q)
    parts = list(q.chunk(3, dim=0)) if h.packed else [q] + ([] if h.gqa else [_neutral(h.k), _neutral(h.v)])
    alive = None
    for w in parts:
        heads = (w != 0).reshape(-1, d * w.shape[1]).any(dim=1)
        alive = heads if alive is None else alive | heads
    return alive


def remove_heads(model: nn.Module, h: Any) -> Optional[list[int]]:
    """Drop the zero heads of one attention block (`pruning.Heads`); returns the original ids removed, or
    None when every head is still there."""
    core = h.core
    if core is None:
        raise ValueError(f"attention block {h.block} ({h.q.name}): no attention module to update after removal")
    d = h.head_dim
    alive = _alive_heads(h)
    n = alive.numel()
    heads = torch.nonzero(alive).reshape(-1)
    if h.gqa:  # every K/V group keeps the same number of query heads (masks were drawn per group)
        kv = _neutral(h.k).shape[0] // d
        per_group = alive.reshape(kv, -1).sum(dim=1)
        if int(per_group.min()) != int(per_group.max()) or int(per_group.min()) == 0:
            raise ValueError(f"attention block {h.block}: grouped-query heads were pruned unevenly across K/V groups "
                             f"({per_group.tolist()} kept): they cannot be removed")
    if heads.numel() == 0:
        heads = torch.tensor([0])
    if heads.numel() == n:
        return None
    rows = (heads[:, None] * d + torch.arange(d)[None, :]).reshape(-1)
    width = n * d
    if h.packed:
        packed_rows = torch.cat([rows, rows + width, rows + 2 * width])
        L.replace_module(model, h.q.name, shrink(h.q.module, packed_rows, 0))
    else:
        for ref in (h.q,) if h.gqa else (h.q, h.k, h.v):
            L.replace_module(model, ref.name, shrink(ref.module, rows, 0))
    for ref in h.extra:  # other per-head row projections of the module (DeBERTa's pos_key_proj, pos_query_proj)
        L.replace_module(model, ref.name, shrink(ref.module, rows, 0))
    L.replace_module(model, h.o.name, shrink(h.o.module, rows, 1))
    original = list(getattr(core, "unicompress_head_ids", range(n)))
    full = int(getattr(core, "unicompress_full_heads", n))
    kept = [original[i] for i in heads.tolist()]
    _set_head_count(core, len(kept), d, None if not h.gqa else _neutral(h.k).shape[0] // d)
    core.unicompress_head_ids = kept
    core.unicompress_full_heads = full
    if HEAD_REMOVAL_FAMILIES.get(family(core)) == "position_bias":
        HeadSubsetBias.install(core)
    return sorted(set(original) - set(kept))


def _set_head_count(core: nn.Module, heads: int, head_dim: int, kv_heads: Optional[int]) -> None:
    """Tell the attention module its new size (every attribute its forward reads)."""
    for attr in _HEADS_ATTRS:
        if isinstance(getattr(core, attr, None), int):
            setattr(core, attr, heads)
    for attr in _WIDTH_ATTRS:
        if isinstance(getattr(core, attr, None), int):
            setattr(core, attr, heads * head_dim)
    if kv_heads and isinstance(getattr(core, "num_key_value_groups", None), int):
        core.num_key_value_groups = heads // kv_heads


class HeadSubsetBias:
    """Forward hooks that give a pruned attention module the position bias of its kept heads only.

    MPNet's encoder computes one relative-position bias [B, H, Lq, Lk] for all H original heads and passes
    it to every layer (``position_bias``, third positional argument); T5's first attention computes it
    (``compute_bias``) and returns it for the layers after. The pre-hook slices the heads the module kept
    (computing the full bias first when the module would compute it itself), the post-hook puts the full
    bias back into a returned ``(output, position_bias, ...)`` so later layers still see every head.
    """

    ARG_INDEX = 2  # MPNetSelfAttention(hidden_states, attention_mask, position_bias)

    def __init__(self):
        self.full: Optional[torch.Tensor] = None

    @classmethod
    def install(cls, core: nn.Module) -> None:
        if getattr(core, "_unicompress_bias_hooks", False):
            return  # kept ids are read from the module on each call
        hook = cls()
        core.register_forward_pre_hook(hook.before, with_kwargs=True)
        core.register_forward_hook(hook.after)
        core._unicompress_bias_hooks = True

    def before(self, module: nn.Module, args: tuple, kwargs: dict):
        kept = list(module.unicompress_head_ids)
        full_heads = int(module.unicompress_full_heads)
        if "position_bias" in kwargs:
            bias = kwargs["position_bias"]
        elif len(args) > self.ARG_INDEX:
            bias = args[self.ARG_INDEX]
        else:
            bias = None
        if bias is None:
            bias = self._own_bias(module, args, kwargs, full_heads)
        self.full = bias
        if bias is None or bias.shape[1] != full_heads:
            return None
        sliced = bias[:, torch.as_tensor(kept, device=bias.device)]
        if "position_bias" in kwargs or len(args) <= self.ARG_INDEX:
            return args, {**kwargs, "position_bias": sliced}
        args = args[:self.ARG_INDEX] + (sliced,) + args[self.ARG_INDEX + 1:]
        return args, kwargs

    def after(self, module: nn.Module, args: tuple, output: Any):
        full, self.full = self.full, None
        returns_bias = isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor)
        if full is not None and hasattr(module, "compute_bias") and returns_bias and output[1].dim() == 4:
            return (output[0], full) + tuple(output[2:])
        return None

    @staticmethod
    def _own_bias(module: nn.Module, args: tuple, kwargs: dict, full_heads: int) -> Optional[torch.Tensor]:
        """What T5Attention computes when no bias is passed in: the relative bias (layer 0) or zeros."""
        if not hasattr(module, "compute_bias"):
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if hidden is None:
            return None
        kv = kwargs.get("key_value_states")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = 0
        if cache is not None and kv is None and hasattr(cache, "get_seq_length"):
            past = cache.get_seq_length(getattr(module, "layer_idx", 0))
            past = int(past) if not isinstance(past, torch.Tensor) else int(past.item())
        q_len = hidden.shape[1]
        k_len = (kv.shape[1] if kv is not None else q_len + past)
        if getattr(module, "has_relative_attention_bias", False):
            return module.compute_bias(q_len, k_len, device=hidden.device, past_seen_tokens=past)
        return torch.zeros((1, full_heads, q_len, k_len), device=hidden.device, dtype=hidden.dtype)


# ---- the whole model -----------------------------------------------------------------------------------------
def remove_units(model: nn.Module, ffn: list, heads: list) -> None:
    """Physically drop zeroed FFN neurons and attention heads (after `pruning.make_permanent`) and keep the
    model's records and config consistent (`update_config`)."""
    sizes = {p.block: remove_neurons(model, p) for p in ffn}
    pruned: dict[int, list[int]] = {}
    for h in heads:
        removed = remove_heads(model, h)
        if removed is not None:
            pruned.setdefault(h.block, [])
            pruned[h.block] = sorted(set(pruned[h.block]) | set(removed))
    update_config(model, getattr(model, "config", None), sizes, pruned)


def update_config(model: nn.Module, config: Any, sizes: dict[int, int], pruned_heads: dict[int, list[int]]) -> None:
    """Record what was removed on the model (for export) and keep its config consistent: HF
    ``config.pruned_heads`` (original head ids) and ``intermediate_size`` when every FFN agrees (per-layer
    sizes are also in ``config.unicompress_intermediate_sizes``)."""
    per_layer = {**getattr(model, "unicompress_intermediate_sizes", {}), **sizes}
    heads = {int(k): list(v) for k, v in getattr(model, "unicompress_pruned_heads", {}).items()}
    for block, removed in pruned_heads.items():
        heads[block] = sorted(set(heads.get(block, [])) | set(removed))
    model.unicompress_intermediate_sizes = dict(sorted(per_layer.items()))
    model.unicompress_pruned_heads = dict(sorted(heads.items()))
    if config is None:
        return
    uniform = (len(set(per_layer.values())) == 1
               and len(per_layer) == getattr(config, "num_hidden_layers", -1))
    if isinstance(config, ViTConfig):  # the zoo ViT: a frozen dataclass
        if uniform:
            model.config = dataclasses.replace(config, intermediate_size=next(iter(per_layer.values())))
        return
    if sizes:
        config.unicompress_intermediate_sizes = dict(per_layer)
        if uniform and hasattr(config, "intermediate_size"):
            config.intermediate_size = next(iter(per_layer.values()))
    if pruned_heads:
        config.pruned_heads = dict(heads)


def restore_heads(model: nn.Module) -> None:
    """After loading a removed model into a freshly built one (`export.load_native`): head counts from the
    narrowed projections, kept head ids from ``unicompress_pruned_heads``, and the bias hooks again."""
    from .discovery import discover

    found = discover(model)
    pruned = getattr(model, "unicompress_pruned_heads", {}) or {}
    for block, items in found.cores.items():
        for f in items:
            core = f.module
            full = int(getattr(core, "unicompress_full_heads", 0) or 0)
            removed = pruned.get(block, [])
            if not removed:
                continue
            full = full or f.num_heads + len(removed)
            core.unicompress_full_heads = full
            core.unicompress_head_ids = [i for i in range(full) if i not in set(removed)]
            _set_head_count(core, f.num_heads, f.head_dim, f.num_kv_heads)
            if HEAD_REMOVAL_FAMILIES.get(family(core)) == "position_bias":
                HeadSubsetBias.install(core)
