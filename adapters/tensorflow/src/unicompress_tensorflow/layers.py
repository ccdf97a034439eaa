"""Finding the compressible layers of a tf_keras model and their roles, and reading/writing their weights in
the neutral [out, in] layout (Keras Dense kernels are [in, out]).

Works on functional and Sequential models (layer names, as the zoo models use the neutral HF names),
subclassed models (dotted attribute paths, e.g. "encoder.blocks.0.query"), and looks through TFMOT
wrappers (PruneLowMagnitude, QuantizeWrapper) and keras MultiHeadAttention (kernels [hidden, heads, d]).
Roles come from the structure (`discovery.py`, by layer types and the graph) through the core's
`assign_roles`; the names only decide when no structure is found.
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

import copy as _copy  # noqa: E402
from contextlib import ExitStack  # noqa: E402
import weakref  # noqa: E402
from typing import Any, Iterator, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from unicompress.backend.types import Inputs, LayerInfo, LayerStats, TransformerStructure, count_nonzero, \
    known_names  # noqa: E402
from unicompress.specs.selector import LayerRole  # noqa: E402
from unicompress.structure import assign_roles, block_from_name, role_from_name  # noqa: E402

from . import discovery  # noqa: E402
from .discovery import MHA_PARTS as _MHA_PARTS  # noqa: E402
from .graph import copy_graph, is_graph_model, unwrap  # noqa: E402
from .models import FactorizedDense, custom_objects  # noqa: E402

__all__ = ["unwrap", "is_graph_model", "named_layers", "layer_infos", "roles", "structure", "get_weights",
           "set_weights", "copy_model", "describe", "run", "to_tensors"]
# A TFMOT QuantizeWrapper replaces its layer's `kernel` attribute by the fake-quantized tensor (and the
# layer stops tracking the variable); the float variable lives in the wrapper's `_weight_vars`.
_FLOAT_KERNELS: "weakref.WeakKeyDictionary[Any, tf.Variable]" = weakref.WeakKeyDictionary()


def role_of(name: str, layer: Any) -> LayerRole:
    """The fallback role of a layer from its type and (HF-style) name: the core's `role_from_name`, the same table
    on every backend; a low-rank factor ``<name>.0`` / ``<name>.1`` takes the role of the layer it replaced."""
    if isinstance(layer, keras.layers.Embedding):
        return LayerRole.embedding
    return role_from_name(name[:-2] if name.endswith((".0", ".1")) else name)


def _entries(model: Any) -> Iterator[tuple[str, Any]]:
    """(neutral name, leaf layer) of every weight-carrying leaf we compress, in model order."""
    if is_graph_model(model):
        for outer in model.layers:
            inner = unwrap(outer)
            if not isinstance(inner, keras.layers.MultiHeadAttention):  # MHA: its QuantizeConfig remembers them
                for weight, _, _ in getattr(outer, "_weight_vars", ()):
                    if "kernel" in weight.name:
                        _FLOAT_KERNELS[inner] = weight
            yield from _expand(inner.name, inner)
    else:  # subclassed: dotted attribute paths are the only stable names
        yield from _walk_attributes(model, "", set())


def remember_float_kernel(leaf: Any, var: tf.Variable) -> None:
    """Where a QuantizeConfig replaces `leaf.kernel` by its fake-quantized tensor: the float variable."""
    _FLOAT_KERNELS[leaf] = var


def _walk_attributes(obj: Any, prefix: str, seen: set[int]) -> Iterator[tuple[str, Any]]:
    """(dotted attribute path, leaf) through the public attributes (and lists) of a subclassed model."""
    for attr, value in vars(obj).items():
        if attr.startswith("_"):
            continue
        items = [(attr, value)] if isinstance(value, keras.layers.Layer) else \
            [(f"{attr}.{i}", v) for i, v in enumerate(value)] if isinstance(value, (list, tuple)) else []
        for name, layer in items:
            layer = unwrap(layer)
            if not isinstance(layer, keras.layers.Layer) or id(layer) in seen:
                continue
            seen.add(id(layer))
            path = f"{prefix}{name}"
            leaves = list(_expand(path, layer))
            if leaves and not isinstance(layer, keras.Model):
                yield from leaves
            else:
                yield from _walk_attributes(layer, f"{path}.", seen)


def _expand(name: str, layer: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(layer, (keras.layers.Dense, keras.layers.Embedding)):
        yield name, layer
    elif isinstance(layer, FactorizedDense):
        yield f"{name}.0", layer.first
        yield f"{name}.1", layer.second
    elif isinstance(layer, keras.layers.MultiHeadAttention):
        for part, attr in _MHA_PARTS:
            yield f"{name}.{part}", getattr(layer, attr)
    elif isinstance(layer, keras.Model):
        for inner in layer.layers:
            yield from _expand(f"{name}.{unwrap(inner).name}", unwrap(inner))


def named_layers(model: Any) -> dict[str, Any]:
    """Neutral name -> leaf keras layer (Dense, Embedding, EinsumDense)."""
    return dict(_entries(model))


def _kernel_to_neutral(layer: Any, kernel: np.ndarray) -> np.ndarray:
    if isinstance(layer, keras.layers.Embedding):
        return kernel
    if kernel.ndim == 3:  # MultiHeadAttention EinsumDense: [hidden, heads, d] or (output) [heads, d, hidden]
        if "output" in layer.name:
            return kernel.reshape(-1, kernel.shape[-1]).T
        return kernel.reshape(kernel.shape[0], -1).T
    return kernel.T


def _neutral_shape(layer: Any, shape: Sequence[int]) -> tuple[int, ...]:
    """The shape `_kernel_to_neutral` gives a kernel of `shape` (without reading the kernel)."""
    shape = tuple(int(d) for d in shape)
    if isinstance(layer, keras.layers.Embedding):
        return shape
    if len(shape) == 3:
        if "output" in layer.name:
            return (shape[-1], shape[0] * shape[1])
        return (shape[1] * shape[2], shape[0])
    return shape[::-1]


def _host_view(var: tf.Variable) -> np.ndarray:
    """A read-only look at a CPU variable's values without a copy (`var.numpy()` copies: 6.7 against 1.8 ms
    to count the non-zeros of MiniLM's 11.7M-entry embedding table)."""
    return np.asarray(var.value())


def _kernel_from_neutral(layer: Any, w: np.ndarray, like: np.ndarray) -> np.ndarray:
    if isinstance(layer, keras.layers.Embedding):
        return w
    return w.T.reshape(like.shape)


def _kernel_var(layer: Any) -> tf.Variable:
    if isinstance(layer, keras.layers.Embedding):
        return layer.embeddings
    kernel = layer.kernel
    return kernel if isinstance(kernel, tf.Variable) else _FLOAT_KERNELS[layer]


def layer_infos(model: Any) -> list[LayerInfo]:
    """Every compressible layer with role, neutral [out, in] shape and block index."""
    out = []
    top = _top_level(model)
    for name, layer in _entries(model):
        if not layer.built:
            continue
        shape = _neutral_shape(layer, _kernel_var(layer).shape)
        out.append(LayerInfo(name, kind_of(layer, top), role_of(name, layer), shape, block_from_name(name)))
    return out


def kind_of(layer: Any, top: Optional[set[int]]) -> str:
    """The layer kind: "embedding"; "einsum_dense" for MultiHeadAttention's projections; "nested_dense" for a
    Dense inside another model of a functional/Sequential one (the graph replay cannot replace it: no low rank);
    else "linear" (a top-level Dense or low-rank factor, or any Dense of a subclassed model)."""
    if isinstance(layer, keras.layers.Embedding):
        return "embedding"
    if isinstance(layer, keras.layers.EinsumDense):
        return "einsum_dense"
    if top is not None and id(layer) not in top:
        return "nested_dense"
    return "linear"


def _top_level(model: Any) -> Optional[set[int]]:
    """ids of the leaves the graph replay can replace: top-level layers and their `FactorizedDense` factors."""
    if not is_graph_model(model):
        return None
    out = set()
    for outer in model.layers:
        inner = unwrap(outer)
        out.add(id(inner))
        if isinstance(inner, FactorizedDense):
            out.update((id(inner.first), id(inner.second)))
    return out


def get_weights(model: Any, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Float weights in neutral [out, in] layout."""
    layers = named_layers(model)
    return {n: _kernel_to_neutral(layers[n], _kernel_var(layers[n]).numpy()).astype(np.float32)
            for n in known_names(layers, names)}


def set_weights(model: Any, weights: dict[str, np.ndarray]) -> None:
    """Write neutral-layout float weights into the kernels of the named layers."""
    layers = named_layers(model)
    for name in known_names(layers, weights):
        var = _kernel_var(layers[name])
        var.assign(_kernel_from_neutral(layers[name], np.asarray(weights[name], np.float32), var.numpy()))


def bias_var(layer: Any) -> Optional[tf.Variable]:
    return getattr(layer, "bias", None)


def structure(model: Any) -> Optional[TransformerStructure]:
    """Attention blocks, FFN pairs, classifier, pooler and embeddings, found from layer types and the graph
    (`discovery.py`); None for a model that is no Transformer."""
    return discovery.structure(model, named_layers(model))


def roles(model: Any, st: Optional[TransformerStructure] = None) -> list[LayerInfo]:
    """`layer_infos` with the roles and blocks of the structure (the core's one rule, `assign_roles`)."""
    return assign_roles(layer_infos(model), st if st is not None else structure(model))


def bias_of(leaf: Any) -> Optional[np.ndarray]:
    """A Dense/EinsumDense bias as one [out] vector in neutral row order (None without a bias)."""
    bias = getattr(leaf, "bias", None)
    if bias is None:
        return None
    return bias.numpy().reshape(-1)  # EinsumDense [heads, d] -> row h * d + j, as the neutral kernel


def set_bias(leaf: Any, values: np.ndarray) -> None:
    leaf.bias.assign(np.asarray(values, np.float32).reshape(leaf.bias.shape))


def to_tensors(model: Any, inputs: Inputs) -> Any:
    """numpy inputs -> what the model's call expects (dict keyed by input names, right dtypes)."""
    if not isinstance(inputs, dict):
        return tf.convert_to_tensor(inputs)
    if is_graph_model(model) and isinstance(model.input, dict):
        return {k: tf.convert_to_tensor(np.asarray(inputs[k]), dtype=t.dtype) for k, t in model.input.items()}
    return {k: tf.convert_to_tensor(v) for k, v in inputs.items()}


def run(model: Any, inputs: Inputs) -> np.ndarray:
    """Inference: numpy in, first output (logits) as float32 numpy out."""
    out = model(to_tensors(model, inputs), training=False)
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    elif isinstance(out, (list, tuple)):
        out = out[0]
    return np.asarray(out.numpy(), dtype=np.float32)


def copy_model(model: Any) -> Any:
    """A deep copy with its own variables: functional/Sequential models rebuilt layer by layer (`graph.replay`:
    constants and Lambda functions kept as they are), subclassed ones by deepcopy."""
    if is_graph_model(model):
        with ExitStack() as scopes:
            for scope in (tfmot.quantization.keras.quantize_scope(), tfmot.sparsity.keras.prune_scope(),
                          keras.utils.custom_object_scope(custom_objects())):
                scopes.enter_context(scope)
            return copy_graph(model)
    return _copy.deepcopy(model)


def describe(model: Any, bits: Optional[dict[str, int]] = None) -> list[LayerStats]:
    """Per-layer shape, parameters, non-zeros and bits of every compressible layer (counted on the
    kernels in place: size and non-zeros do not depend on the layout)."""
    bits = bits or {}
    layers = named_layers(model)
    out = []
    for i in layer_infos(model):
        kernel = _host_view(_kernel_var(layers[i.name]))
        out.append(LayerStats(i.name, i.kind, i.shape, int(kernel.size), count_nonzero(kernel), bits.get(i.name, 32),
                              i.role.value))
    return out


# public names for the modules that write kernels in place (masks, structured pruning)
kernel_var = _kernel_var
kernel_from_neutral = _kernel_from_neutral
kernel_to_neutral = _kernel_to_neutral
