"""Finding layers, roles and the Transformer structure of a Paddle model; weights in neutral [out, in].

A LayerInfo name is the Paddle sublayer path (a zoo model's sublayer names are the neutral names).
The structure is discovered from layer types (`structure`): paddle.nn.MultiHeadAttention, the
Transformer encoder/decoder layers and the zoo's blocks; roles follow it (`unicompress.structure.
assign_roles`), with the core's name rules (`role_from_name`) only as the fallback for models without attention.
Paddle's Linear keeps its weight [in, out]: every weight crossing this module is transposed.
Quantized models (paddle.quantization) wrap a Linear into a QuantedLinear that keeps `weight` [in, out].
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from unicompress.backend.types import (AttentionInfo, FFNInfo, LayerInfo, LayerStats, TransformerStructure,
                                     count_nonzero, known_names)
from unicompress.specs.selector import LayerRole
from unicompress.structure import assign_roles, block_from_name, role_from_name

from .compat import paddle

def is_linear(layer: Any) -> bool:
    """A Linear or a quantized Linear (both hold `weight` [in, out])."""
    from paddle.nn.quant.qat.linear import QuantedLinear
    return isinstance(layer, (paddle.nn.Linear, QuantedLinear))


def role_of(name: str, layer: Any = None) -> LayerRole:
    """The fallback role: an Embedding by type, else the core's name rules (`role_from_name`)."""
    if isinstance(layer, paddle.nn.Embedding):
        return LayerRole.embedding
    return role_from_name(name)


def compressible(model: Any) -> dict[str, Any]:
    """name -> Linear/Embedding sublayer, in model order (quantizer internals excluded)."""
    out = {}
    for name, layer in model.named_sublayers():
        if "quanter" in name:
            continue
        if is_linear(layer) or isinstance(layer, paddle.nn.Embedding):
            out[name] = layer
    return out


def layer_infos(model: Any, st: Optional[TransformerStructure] = None) -> list[LayerInfo]:
    """Every Linear (and Embedding) with its role and neutral [out, in] shape: roles from the structure
    (`structure(model)`, or `st` when given) by the core's rule, names only as the fallback."""
    infos = []
    for name, layer in compressible(model).items():
        shape = tuple(layer.weight.shape)
        linear = is_linear(layer)
        infos.append(LayerInfo(name, "linear" if linear else "embedding", role_of(name, layer),
                               (shape[1], shape[0]) if linear else shape, block_from_name(name)))
    return assign_roles(infos, st if st is not None else structure(model))


def host_view(t: Any) -> np.ndarray:
    """A look at a CPU tensor's values without a copy (DLPack), for reading only: `Tensor.numpy()` copies
    (23 against 1.8 ms to count the non-zeros of MiniLM's 11.7M-entry embedding table). Falls back to
    the copy where DLPack cannot share the memory."""
    try:
        if t.place.is_cpu_place():
            return np.from_dlpack(t.detach())  # parameters refuse DLPack while they require gradients
    except (TypeError, RuntimeError, BufferError, AttributeError, ValueError):
        pass
    return t.numpy()


def get_weight(layer: Any) -> np.ndarray:
    """Neutral [out, in] float32 weight of a Linear (embeddings as stored)."""
    w = layer.weight.numpy()
    return np.ascontiguousarray(w.T) if is_linear(layer) else w.copy()


def set_weight(layer: Any, value: np.ndarray) -> None:
    value = np.asarray(value, dtype=np.float32)
    layer.weight.set_value(np.ascontiguousarray(value.T) if is_linear(layer) else value)


def weights(model: Any, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    layers = compressible(model)
    return {n: get_weight(layers[n]) for n in known_names(layers, names)}


def set_weights(model: Any, values: dict[str, np.ndarray]) -> None:
    layers = compressible(model)
    for name in known_names(layers, values):
        set_weight(layers[name], values[name])


# ---- Transformer structure (from layer types) -----------------------------------------------------------
def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _block_types() -> tuple[type, ...]:
    """Layer types that are one Transformer block each: Paddle's encoder/decoder layers and the zoo's."""
    from .models import BertLayer, ViTLayer
    nn = paddle.nn
    return (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, BertLayer, ViTLayer)


def _plain_linear(layer: Any) -> bool:
    """A float Linear whose rows/columns can be sliced (a converted QuantedLinear holds integers and
    per-channel scales that would need slicing too)."""
    from paddle.nn.quant.qat.linear import QuantedLinear
    return isinstance(layer, paddle.nn.Linear) and not isinstance(layer, QuantedLinear)


def _removability(linears: dict[str, Any], names: Sequence[str], unit: str) -> tuple[bool, str]:
    quantized = [n for n in names if not _plain_linear(linears[n])]
    if quantized:
        return False, (f"{quantized[0]} is quantized: its integer weights and scales are not sliced; "
                       f"prune {unit} before quantizing")
    return True, ""


def _attention_of(name: str, layer: Any, linears: dict[str, Any], block: int, kind: str) -> Optional[AttentionInfo]:
    """The AttentionInfo of a paddle.nn.MultiHeadAttention (q_proj/k_proj/v_proj/out_proj), or of the zoo's
    SelfAttention (query/key/value; its output is the sibling ``output.dense``), None when a projection is
    no longer a Linear (e.g. factorised by low rank)."""
    from .models import SelfAttention
    if isinstance(layer, SelfAttention):
        parent = name.rpartition(".")[0]
        q, k, v, o = (_join(name, "query"), _join(name, "key"), _join(name, "value"), _join(parent, "output.dense"))
    else:
        q, k, v, o = (_join(name, p) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
    if not all(n in linears for n in (q, k, v, o)):
        return None
    removable, note = _removability(linears, (q, k, v, o), "heads")
    return AttentionInfo(block, q, k, v, o, int(layer.num_heads), int(layer.head_dim), kind=kind,
                         removable=removable, note=note)


def _ffn_of(name: str, layer: Any, linears: dict[str, Any], block: int) -> Optional[FFNInfo]:
    """linear1/linear2 of Paddle's encoder/decoder layers, intermediate/output.dense of the zoo's blocks."""
    if isinstance(layer, (paddle.nn.TransformerEncoderLayer, paddle.nn.TransformerDecoderLayer)):
        fin, fout = _join(name, "linear1"), _join(name, "linear2")
    else:
        fin, fout = _join(name, "intermediate.dense"), _join(name, "output.dense")
    if fin not in linears or fout not in linears:
        return None
    removable, note = _removability(linears, (fin, fout), "neurons")
    return FFNInfo(block, fin, fout, removable=removable, note=note)


def _attention_kind(name: str, layer: Any, owner: Any) -> str:
    """"cross" for a decoder layer's cross_attn (and a bare MultiHeadAttention whose keys/values come from
    another width), else "self"."""
    if isinstance(owner, paddle.nn.TransformerDecoderLayer):
        return "cross" if name.rpartition(".")[2] == "cross_attn" else "self"
    if isinstance(layer, paddle.nn.MultiHeadAttention) and (layer.kdim != layer.embed_dim
                                                           or layer.vdim != layer.embed_dim):
        return "cross"
    return "self"


def structure(model: Any) -> Optional[TransformerStructure]:
    """Attention heads and FFN pairs found by layer TYPE (None when the model has no attention).

    Blocks: each `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer` (self_attn, cross_attn, linear1/
    linear2; PaddleNLP's BERT is built from these) and each zoo BertLayer / ViTLayer is one block; a bare
    `nn.MultiHeadAttention` elsewhere is a block of its own (MHAs with one parent share it; its FFN is
    unknown). Blocks are numbered in model order; a decoder layer's self- and cross-attention share its
    number. The head (classifier, pooler) is found by `_with_head`; every Embedding is an embedding.
    Heads/neurons of quantized projections are marked removable=False (with a note).
    """
    from .models import SelfAttention
    linears = {n: l for n, l in compressible(model).items() if is_linear(l)}
    block_types = _block_types()
    containers: list[tuple[str, Any]] = []
    bare_parents: list[str] = []
    block_ids: dict[str, int] = {}  # block key (container name, or a bare MHA's parent) -> number
    arch: dict[str, None] = {}
    attention, ffn = [], []
    for name, layer in model.named_sublayers(include_self=True):
        if isinstance(layer, block_types):
            containers.append((name, layer))
            block = block_ids.setdefault(name, len(block_ids))
            arch[type(layer).__name__] = None
            f = _ffn_of(name, layer, linears, block)
            if f is not None:
                ffn.append(f)
        elif isinstance(layer, (paddle.nn.MultiHeadAttention, SelfAttention)):
            owner = next((c for c in reversed(containers) if name.startswith(c[0] + ".") or not c[0]), None)
            if owner is None:  # a user's own block: the MHA's parent groups its attentions
                parent = name.rpartition(".")[0]
                key = f"<bare>{parent}"
                bare_parents.append(parent)
                arch[type(layer).__name__] = None
            else:
                key = owner[0]
            block = block_ids.setdefault(key, len(block_ids))
            a = _attention_of(name, layer, linears, block, _attention_kind(name, layer, owner and owner[1]))
            if a is not None:
                attention.append(a)
    if not attention and not ffn:
        return None
    attention.sort(key=lambda a: a.block)  # a zoo block's FFN is found before its attention; keep model order
    inside = tuple(p + "." for p in [c for c, _ in containers] + bare_parents if p)
    return _with_head(model, linears, inside, attention, ffn, "+".join(arch))


def _with_head(model: Any, linears: dict[str, Any], inside: tuple[str, ...], attention: list[AttentionInfo],
               ffn: list[FFNInfo], arch: str) -> TransformerStructure:
    """The structure plus what surrounds the blocks: embeddings, the head's pooler layers and the classifier.

    The head is the Linears after the last block's layers that lie in no block (`inside`: block prefixes):
    its last Linear is the classifier (unless its name says pooler, as in a bare BERT), and those before it
    that map the hidden width onto itself are pooler-like (BERT's pooler, RoBERTa's classifier.dense).
    """
    layers = compressible(model)
    names = list(layers)
    in_blocks = {n for a in attention for n in a.layers} | {n for f in ffn for n in f.layers}
    last = max(names.index(n) for n in in_blocks)
    embeddings = tuple(n for n, l in layers.items()
                       if isinstance(l, paddle.nn.Embedding) or role_of(n, l) is LayerRole.embedding)
    head = [n for n in names[last + 1:] if n in linears and not n.startswith(inside) and n not in embeddings]
    first = linears[attention[0].output] if attention else linears[ffn[0].ffn_out]
    hidden = int(first.weight.shape[1])
    classifier = head[-1] if head and role_of(head[-1]) is not LayerRole.pooler else None
    pooler = tuple(n for n in head if n != classifier and (role_of(n) is LayerRole.pooler
                                                            or tuple(linears[n].weight.shape) == (hidden, hidden)))
    return TransformerStructure(
        hidden_size=hidden, num_layers=len({b.block for b in (*attention, *ffn)}),
        attention=tuple(attention), ffn=tuple(ffn), classifier=classifier, embeddings=embeddings,
        pooler=pooler, source="discovered", architecture=f"paddle:{arch}")


def describe(model: Any) -> list[LayerStats]:
    """Shape, parameters, non-zeros and bits of every compressible layer."""
    from .quantization import layer_bits
    stats = []
    for info, (name, layer) in zip(layer_infos(model), compressible(model).items()):
        w = host_view(layer.weight)
        stats.append(LayerStats(name, info.kind, info.shape, int(w.size), count_nonzero(w),
                                layer_bits(layer), info.role.value))
    return stats


def to_tensors(inputs: Any, names: Sequence[str]) -> list[Any]:
    """Numpy inputs (dict or array) -> Paddle tensors in the model's argument order."""
    if isinstance(inputs, dict):
        return [paddle.to_tensor(np.asarray(inputs[n])) for n in names if n in inputs]
    return [paddle.to_tensor(np.asarray(inputs))]


def run(model: Any, inputs: Any) -> np.ndarray:
    """Inference (eval mode, no grad): numpy in, logits float32 numpy out."""
    names = getattr(model, "input_names", ("input_ids", "attention_mask"))
    if isinstance(inputs, dict) and "token_type_ids" in inputs and "token_type_ids" not in names:
        names = tuple(names) + ("token_type_ids",)
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            out = model(*to_tensors(inputs, names))
    finally:
        if was_training:
            model.train()
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out.numpy().astype(np.float32)
