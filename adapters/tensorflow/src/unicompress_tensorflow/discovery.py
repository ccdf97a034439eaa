"""The Transformer structure of a tf_keras model, found from layer TYPES and the functional graph.

- attention: every keras `MultiHeadAttention` (its EinsumDense ``_query_dense`` ... ``_output_dense`` are the
  layers ``<mha>.query`` ... ``<mha>.attention_output``; heads and head size from the layer; "self" when the
  query, key and value inputs are one tensor, else "cross"), and the zoo's `ScaledDotProductAttention` with the
  Dense layers that feed it (Q, K, V) and the Dense that consumes it (O).
- FFN pairs: a Dense that widens (units > its input width) whose output reaches, through element-wise layers
  only (activations, Dropout), a Dense that narrows back to that input width; a gated FFN multiplies two such
  widening Dense layers of one input (``act(gate(x)) * up(x)``) before the narrowing one.
- classifier: the Dense that produces the model's (first) output, through weight-free layers only;
  pooler: the Dense layers on the single-input path into the classifier (BERT's pooler).
- embeddings: every Embedding.
Blocks are numbered in model order: a self-attention opens a block, a cross-attention joins the open one
(decoder), an FFN closes it. Subclassed models have no graph: their MultiHeadAttention layers are found (not
removable: unicompress cannot rebuild a subclassed model) and their FFN pairs only by the zoo's names.
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

from dataclasses import dataclass, replace  # noqa: E402
from typing import Any, Optional, Sequence  # noqa: E402

import tf_keras as keras  # noqa: E402
from unicompress.backend.types import AttentionInfo, FFNInfo, TransformerStructure  # noqa: E402

from .graph import Graph, graph, unwrap  # noqa: E402
from .models import FactorizedDense, ScaledDotProductAttention  # noqa: E402

MHA_PARTS = (("query", "_query_dense"), ("key", "_key_dense"), ("value", "_value_dense"),
             ("attention_output", "_output_dense"))
#: TFOpLambda functions that act element by element (a neuron stays a neuron through them)
ELEMENTWISE_OPS = frozenset({"nn.gelu", "nn.relu", "nn.relu6", "nn.silu", "nn.swish", "nn.elu", "nn.selu",
                             "nn.leaky_relu", "math.tanh", "math.sigmoid", "nn.sigmoid", "math.softplus",
                             "nn.softplus", "math.erf", "identity"})
MULTIPLY_OPS = frozenset({"math.multiply", "__operators__.mul", "multiply"})
_TRANSPARENT = (keras.layers.Activation, keras.layers.Dropout, keras.layers.ReLU, keras.layers.LeakyReLU,
                keras.layers.ELU, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
                keras.layers.AlphaDropout, keras.layers.ActivityRegularization)
_DENSE = (keras.layers.Dense, FactorizedDense)


def _units(layer: Any) -> int:
    return int(layer.units)


def _in_width(layer: Any) -> int:
    if isinstance(layer, FactorizedDense):
        return int(layer.first.kernel.shape[0])
    return int(layer.kernel.shape[0])


def _is_elementwise(layer: Any) -> bool:
    if isinstance(layer, _TRANSPARENT):
        return True
    if type(layer).__name__ == "QuantizeLayer":  # TFMOT's input fake-quant (static quantization)
        return True
    fn = getattr(layer, "symbol", None) if type(layer).__name__ == "TFOpLambda" else None
    return fn is not None and fn.replace("tf.", "", 1) in ELEMENTWISE_OPS


def _is_multiply(layer: Any) -> bool:
    if isinstance(layer, keras.layers.Multiply):
        return True
    fn = getattr(layer, "symbol", None) if type(layer).__name__ == "TFOpLambda" else None
    return fn is not None and fn.replace("tf.", "", 1) in MULTIPLY_OPS


@dataclass
class _Unit:
    """An attention block or FFN pair before blocks are numbered."""

    position: int  # first call of its first layer in the graph
    kind: str  # "self", "cross", "ffn"
    info: Any  # AttentionInfo or FFNInfo (block filled in by `_assemble`)
    hidden: int  # width of its input


def structure(model: Any, names: dict[str, Any]) -> Optional[TransformerStructure]:
    """The discovered structure of `model` (`names`: neutral name -> leaf layer), or None when it has neither
    attention nor an FFN pair."""
    g = graph(model)
    if g is None:
        return _subclassed(model, names)
    top = [unwrap(layer) for layer in model.layers]
    units: list[_Unit] = []
    taken: set[int] = set()
    attention_layers: set[int] = set()
    for layer in top:
        found = _mha(layer, g) if isinstance(layer, keras.layers.MultiHeadAttention) else \
            _sdpa(layer, g) if isinstance(layer, ScaledDotProductAttention) else None
        if found is not None:
            units.append(found[0])
            attention_layers |= {id(m) for m in found[1]}
    taken |= attention_layers
    for layer in top:
        if isinstance(layer, _DENSE) and id(layer) not in taken:
            found = _ffn(layer, g, taken)
            if found is not None:
                units.append(found[0])
                taken |= {id(m) for m in found[1]}
    classifier = _classifier(g, taken)
    pooler = _pooler(g, classifier, taken) if classifier is not None else []
    is_mha = any(isinstance(layer, keras.layers.MultiHeadAttention) for layer in top)
    architecture = "keras:MultiHeadAttention" if is_mha else \
        "unicompress:ScaledDotProductAttention" if attention_layers else "keras:Dense"
    return _assemble(units, names, classifier.name if classifier is not None else None, pooler,
                     _shared(g, attention_layers, top), architecture)


def _assemble(units: list, names: dict[str, Any], classifier: Optional[str], pooler: Sequence[str], shared: bool,
              architecture: str) -> Optional[TransformerStructure]:
    attention, ffn = [], []
    block, has = -1, set()
    for u in sorted(units, key=lambda u: u.position):
        opens = block < 0 or (u.kind == "self" and bool(has & {"self", "ffn"})) or \
            (u.kind == "cross" and bool(has & {"cross", "ffn"})) or (u.kind == "ffn" and "ffn" in has)
        if opens:
            block, has = block + 1, set()
        has.add(u.kind)
        (ffn if u.kind == "ffn" else attention).append(replace(u.info, block=block))
    if not attention and not ffn:
        return None
    first = min(units, key=lambda u: (u.kind == "ffn", u.position))
    return TransformerStructure(
        hidden_size=first.hidden, num_layers=block + 1, attention=tuple(attention), ffn=tuple(ffn),
        classifier=classifier,
        embeddings=tuple(n for n, layer in names.items() if isinstance(layer, keras.layers.Embedding)),
        pooler=tuple(pooler), shared_blocks=shared, source="discovered", architecture=architecture)


# ---- attention ------------------------------------------------------------------------------------------

def _mha(layer: Any, g: Graph) -> Optional[tuple[_Unit, list]]:
    if not layer.built or not getattr(layer, "_built_from_signature", False):
        return None
    calls = g.calls_of(layer)
    if not calls:
        return None
    args, kwargs = calls[0].args()
    query = args[0] if args else kwargs.get("query")
    value = args[1] if len(args) > 1 else kwargs.get("value")
    key = args[2] if len(args) > 2 else kwargs.get("key", None)
    kind = "self" if value is query and (key is None or key is query) else "cross"
    removable, notes = True, []
    if layer._value_dim != layer._key_dim:
        removable = False
        notes.append(f"value_dim {layer._value_dim} differs from key_dim {layer._key_dim}: a head is not one "
                     "width across Q/K/V/O")
    if len(layer._query_dense.kernel.shape) != 3 or len(layer._output_dense.kernel.shape) != 3:
        removable = False
        notes.append("attention over more than one axis (attention_axes): kernels are not [in, heads, d]")
    info = AttentionInfo(0, *(f"{layer.name}.{part}" for part, _ in MHA_PARTS), num_heads=int(layer._num_heads),
                         head_dim=int(layer._key_dim), kind=kind, removable=removable, note="; ".join(notes))
    return _Unit(g.order[id(layer)], kind, info, int(layer._query_dense.kernel.shape[0])), [layer]


def _sdpa(layer: Any, g: Graph) -> Optional[tuple[_Unit, list]]:
    """The zoo's attention: three Dense layers feed it, one Dense consumes it."""
    parents = g.producers(layer)[:3]
    consumers = g.consumers.get(id(layer), [])
    if len(parents) < 3 or len(consumers) != 1 or not all(isinstance(p, keras.layers.Dense) for p in parents) \
            or not isinstance(consumers[0], keras.layers.Dense):
        return None
    q, k, v = parents
    o = consumers[0]
    sources = [_source(g, x) for x in (q, k, v)]
    kind = "self" if sources[0] == sources[1] == sources[2] else "cross"
    info = AttentionInfo(0, q.name, k.name, v.name, o.name, num_heads=layer.num_heads, head_dim=layer.head_dim,
                         kind=kind)
    return _Unit(g.order[id(q)], kind, info, _in_width(q)), [q, k, v, o]


def _source(g: Graph, layer: Any) -> list:
    """The producers of `layer`, looking through TFMOT's input quantizers (static quantization)."""
    out = []
    for p in g.producers(layer):
        while type(p).__name__ == "QuantizeLayer" and len(g.producers(p)) == 1:
            p = g.producers(p)[0]
        out.append(id(p))
    return out


def _shared(g: Graph, attention_layers: set[int], top: list) -> bool:
    """A layer object called at several places of the graph (one set of weights for several blocks)."""
    return any(len(g.calls_of(layer)) > 1 for layer in top if id(layer) in attention_layers)


# ---- FFN pairs --------------------------------------------------------------------------------------------

def _forward(layer: Any, g: Graph) -> tuple[Optional[Any], list[Any], bool]:
    """From `layer`'s output through element-wise layers: (first other consumer, the path, single use)."""
    path, single, current = [], True, layer
    while True:
        nxt = g.consumers.get(id(current), [])
        if len(nxt) != 1:
            return None, path, False
        single = single and len(g.calls_of(current)) == 1
        current = nxt[0]
        if not _is_elementwise(current):
            return current, path, single
        path.append(current)


def _has_activation(layer: Any, path: list) -> bool:
    act = getattr(layer, "activation", None)
    linear = act is None or getattr(act, "__name__", "") == "linear"
    return not linear or any(isinstance(p, (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                                            keras.layers.ELU)) or type(p).__name__ == "TFOpLambda" for p in path)


def _ffn(first: Any, g: Graph, taken: set[int]) -> Optional[tuple[_Unit, list]]:
    width = _in_width(first)
    if _units(first) <= width:
        return None
    nxt, path, single = _forward(first, g)
    gate = None
    if nxt is not None and _is_multiply(nxt):
        other = [p for p in g.producers(nxt) if p is not (path[-1] if path else first)]
        partner = _widening_source(other[0], g, first) if len(other) == 1 else None
        if partner is None:
            return None
        gate_layer, gate_path = partner
        up, up_path = first, path
        if _has_activation(up, up_path) and not _has_activation(gate_layer, gate_path):
            up, gate_layer = gate_layer, up  # the activated branch is the gate
        gate = gate_layer
        first = up
        nxt, more, single2 = _forward(nxt, g)
        path = path + more
        single = single and single2
    if nxt is None or not isinstance(nxt, _DENSE) or id(nxt) in taken or _units(nxt) != width:
        return None
    if _in_width(nxt) != _units(first):
        return None
    members = [first, nxt] + ([gate] if gate is not None else [])
    removable, note = True, ""
    if any(isinstance(m, FactorizedDense) for m in members):
        removable, note = False, "a factorised (low-rank) layer: its neurons are not one row of one kernel"
    elif not single:
        removable, note = False, "the FFN layer is called at several places of the graph"
    info = FFNInfo(0, first.name, nxt.name, gate=gate.name if gate is not None else None, removable=removable,
                   note=note)
    return _Unit(g.order[id(first)], "ffn", info, width), members


def _widening_source(layer: Any, g: Graph, like: Any) -> Optional[tuple[Any, list]]:
    """The widening Dense behind `layer` (through element-wise layers) that reads the same input as `like`."""
    path = []
    while _is_elementwise(layer):
        path.insert(0, layer)
        parents = g.producers(layer)
        if len(parents) != 1:
            return None
        layer = parents[0]
    if isinstance(layer, _DENSE) and _units(layer) == _units(like) and _source(g, layer) == _source(g, like):
        return layer, path
    return None


# ---- the head ----------------------------------------------------------------------------------------

def _classifier(g: Graph, attention_layers: set[int]) -> Optional[Any]:
    """The Dense producing the first output, through weight-free single-input layers."""
    if not g.outputs:
        return None
    layer = g.outputs[0]
    while not isinstance(layer, _DENSE):
        parents = g.producers(layer)
        if len(parents) != 1 or layer.weights:
            return None
        layer = parents[0]
    return None if id(layer) in attention_layers else layer


def _pooler(g: Graph, classifier: Any, taken: set[int]) -> list[str]:
    """Dense layers on the single-input path into the classifier, nearest first."""
    out, layer = [], classifier
    while True:
        parents = g.producers(layer)
        if len(parents) != 1:
            return out
        layer = parents[0]
        if id(layer) in taken or isinstance(layer, (keras.layers.Embedding, keras.layers.InputLayer)):
            return out
        if isinstance(layer, _DENSE):
            out.append(layer.name)


# ---- subclassed -----------------------------------------------------------------------------------------

def _subclassed(model: Any, names: dict[str, Any]) -> Optional[TransformerStructure]:
    """MultiHeadAttention layers by type (in attribute order); FFN pairs only by the zoo's names."""
    note = "subclassed model: unicompress cannot rebuild its layers (remove_pruned needs a functional model)"
    leaf_names = {id(leaf): n for n, leaf in names.items()}
    order = {n: i for i, n in enumerate(names)}
    units = []
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, keras.layers.MultiHeadAttention) or not layer.built:
            continue
        parts = [leaf_names.get(id(getattr(layer, attr))) for _, attr in MHA_PARTS]
        if None in parts:
            continue
        info = AttentionInfo(0, *parts, num_heads=int(layer._num_heads), head_dim=int(layer._key_dim),
                             removable=False, note=note)
        units.append(_Unit(order[parts[0]], "self", info, int(layer._query_dense.kernel.shape[0])))
    for name in names:
        out_name = name[: -len("intermediate.dense")] + "output.dense"
        if name.endswith("intermediate.dense") and out_name in names:
            units.append(_Unit(order[name], "ffn", FFNInfo(0, name, out_name, removable=False, note=note),
                               int(names[name].kernel.shape[0])))
    arch = "keras:MultiHeadAttention" if any(u.kind != "ffn" for u in units) else "names"
    return _assemble(units, names, None, (), False, arch)
