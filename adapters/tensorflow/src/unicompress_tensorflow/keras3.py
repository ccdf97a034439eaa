"""Keras 3 models (`import keras`, what TensorFlow users get by default) on the TensorFlow backend.

TFMOT works on tf_keras (Keras 2) models only. A Keras 3 functional or Sequential model is rebuilt here as a
tf_keras model, node by node: each Keras 3 layer becomes the tf_keras layer of the same class from its config
(keys tf_keras does not know must hold their default; initializers are dropped, the weights are copied
afterwards, shape by shape), and each Keras 3 op between layers (``x + y``, ``keras.ops.cast``, slicing) a
tf_keras Lambda that runs the op's own TensorFlow implementation. The rebuilt model computes the same outputs
(checked by the tests) and is what the stages compress: the result of `compress` is a tf_keras model.

A Keras 3 model that cannot be rebuilt (subclassed, or a layer without a tf_keras equivalent) is refused
before any work with `Keras3ModelError`, naming Keras 3, the layer, and what to do instead.
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

import inspect  # noqa: E402
import weakref  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from unicompress.errors import UnicompressError  # noqa: E402

ADVICE = ("Build the model with tf_keras instead: `import tf_keras as keras` (Keras 2, what TFMOT needs), with "
          "the environment variable TF_USE_LEGACY_KERAS=1 set before TensorFlow is imported so that tf.keras is "
          "tf_keras too")
_BASE_KWARGS = {"name", "trainable", "dtype", "input_shape", "batch_input_shape", "batch_size", "input_dim",
                "dynamic", "autocast"}
_DROPPED = ("_initializer", )  # the weights are copied after the rebuild
_REFUSED = ("_regularizer", "_constraint")  # change training: tf_keras would need their own objects
_TWINS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


class Keras3ModelError(UnicompressError, TypeError):
    """A Keras 3 model that unicompress-tensorflow cannot rebuild as tf_keras."""


def is_keras3(obj: Any) -> bool:
    """True for a Keras 3 model (classes from the `keras` package, not `tf_keras`). Imports nothing."""
    try:
        return any(c.__module__.split(".")[0] == "keras" for c in type(obj).__mro__) and \
            not any(c.__module__.split(".")[0] == "tf_keras" for c in type(obj).__mro__)
    except Exception:
        return False


def _refuse(why: str) -> Keras3ModelError:
    import keras

    return Keras3ModelError(f"This is a Keras 3 model (keras {keras.__version__}, `import keras`). "
                            "unicompress-tensorflow compresses tf_keras (Keras 2) models with TFMOT, and rebuilds a "
                            "Keras 3 functional or Sequential model as tf_keras when every layer has a tf_keras "
                            f"equivalent; this one cannot be rebuilt: {why}. {ADVICE}.")


def functional_of(model: Any) -> Any:
    """The Keras 3 functional graph of a model (Sequential models hold one once built)."""
    import keras

    if isinstance(model, keras.Sequential):
        inner = getattr(model, "_functional", None)
        if inner is None:
            raise _refuse("a Sequential model that is not built (give it a keras.Input first)")
        return inner
    if not hasattr(model, "_nodes_by_depth") or not isinstance(model, keras.Model) or \
            type(model).__name__ not in ("Functional", "Model"):
        raise _refuse(f"a subclassed model ({type(model).__qualname__}) has no graph to rebuild")
    return model


# ---- layers ----------------------------------------------------------------------------------------------

def _plain_dtype(value: Any) -> Any:
    if isinstance(value, dict):  # a serialized DTypePolicy
        return value.get("config", {}).get("name", "float32")
    return getattr(value, "name", value)


def _is_default(value: Any) -> bool:
    return value is None or value is False or value == 0 or value in ((), [], {})


def tf_keras_layer(layer: Any) -> Any:
    """The tf_keras layer of the same class and configuration (unbuilt)."""
    cls = getattr(tf_keras.layers, type(layer).__name__, None)
    if cls is None or not type(layer).__module__.startswith("keras.src.layers"):
        raise _refuse(f"layer {layer.name!r} ({type(layer).__module__}.{type(layer).__name__}) has no tf_keras "
                      "equivalent")
    accepted = set(inspect.signature(cls.__init__).parameters) | _BASE_KWARGS
    cfg = {}
    for key, value in layer.get_config().items():
        if key.endswith(_DROPPED):
            continue
        if key.endswith(_REFUSED) and value is not None:
            raise _refuse(f"layer {layer.name!r} has a {key}; tf_keras would need its own")
        if key == "dtype":
            value = _plain_dtype(value)
        if key == "activation" and isinstance(value, dict):
            raise _refuse(f"layer {layer.name!r} has a custom activation {value.get('class_name')}")
        if key not in accepted:
            if not _is_default(value):
                raise _refuse(f"layer {layer.name!r} sets {key}={value!r}, which tf_keras' {cls.__name__} lacks")
            continue
        cfg[key] = value
    try:
        return cls(**cfg)  # not from_config: tf_keras' MultiHeadAttention.from_config wants its build shapes
    except (TypeError, ValueError) as err:
        raise _refuse(f"layer {layer.name!r}: tf_keras' {cls.__name__} rejects its configuration ({err})") from err


def _op_layer(op: Any, args: list, kwargs: dict, is_tensor: Callable[[Any], bool]) -> tuple[Any, list]:
    """A tf_keras Lambda running a Keras 3 op's TensorFlow implementation on the call's tensors."""
    flat_args, flat_kwargs = tf.nest.flatten(args), tf.nest.flatten(kwargs)
    slots = [i for i, v in enumerate(flat_args + flat_kwargs) if is_tensor(v)]

    def run(tensors, _op=op, _args=args, _kwargs=kwargs, _slots=slots, _n=len(flat_args)):
        values = list(tf.nest.flatten(_args)) + list(tf.nest.flatten(_kwargs))
        for slot, t in zip(_slots, tensors if isinstance(tensors, (list, tuple)) else [tensors]):
            values[slot] = t
        a = tf.nest.pack_sequence_as(_args, values[:_n])
        k = tf.nest.pack_sequence_as(_kwargs, values[_n:])
        return _op.call(*a, **k)

    return tf_keras.layers.Lambda(run, name=op.name), slots


def _call_kwargs(layer: Any, kwargs: dict) -> dict:
    """The keyword arguments tf_keras' call of `layer` accepts (others must be unset)."""
    params = inspect.signature(layer.call).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    out = {}
    for key, value in kwargs.items():
        if key in params:
            out[key] = value
        elif not _is_default(value):
            raise _refuse(f"layer {layer.name!r} is called with {key}=..., which tf_keras' "
                          f"{type(layer).__name__} does not take")
    return out


# ---- the rebuild -----------------------------------------------------------------------------------------

def to_tf_keras(model: Any) -> Any:
    """A tf_keras functional model computing what the Keras 3 `model` computes, with a copy of its weights."""
    import keras

    graph = functional_of(model)
    is_tensor = lambda v: isinstance(v, keras.KerasTensor)  # noqa: E731
    tensors: dict[int, Any] = {}
    for x in graph.inputs:
        tensors[id(x)] = tf_keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name)
    pairs: list[tuple[Any, Any]] = []
    made: dict[int, Any] = {}
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.is_input:
                continue
            op, args, kwargs = node.operation, list(node.arguments.args), dict(node.arguments.kwargs)
            swap = lambda v: tensors[id(v)] if is_tensor(v) else v  # noqa: E731
            if isinstance(op, keras.layers.Layer):
                if id(op) not in made:
                    made[id(op)] = tf_keras_layer(op)
                    pairs.append((op, made[id(op)]))
                new = made[id(op)]
                out = new(*tf.nest.map_structure(swap, args), **_call_kwargs(new, tf.nest.map_structure(swap, kwargs)))
            else:
                if keras.config.backend() != "tensorflow":
                    raise _refuse(f"op {op.name!r} between layers runs on Keras' {keras.config.backend()!r} backend, "
                                  "not in TensorFlow")
                lam, slots = _op_layer(op, args, kwargs, is_tensor)
                flat = tf.nest.flatten(args) + tf.nest.flatten(kwargs)
                inputs = [tensors[id(flat[s])] for s in slots]
                out = lam(inputs if len(inputs) != 1 else inputs[0])
            for old, new_t in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
                tensors[id(old)] = new_t
    inputs = tf.nest.map_structure(lambda t: tensors[id(t)], graph._inputs_struct)
    outputs = tf.nest.map_structure(lambda t: tensors[id(t)], graph._outputs_struct)
    rebuilt = tf_keras.Model(inputs, outputs, name=model.name)
    rebuilt._unicompress_keras3_pairs = [(weakref.ref(a), b) for a, b in pairs]
    copy_weights(pairs)
    return rebuilt


def copy_weights(pairs: list[tuple[Any, Any]], to_keras3: bool = False) -> None:
    """Weights from each Keras 3 layer into its tf_keras twin (or back), checked shape by shape."""
    for k3, tk in pairs:
        src, dst = (tk, k3) if to_keras3 else (k3, tk)
        values = [np.asarray(v) for v in src.get_weights()]
        shapes = [tuple(w.shape) for w in dst.weights]
        if [v.shape for v in values] != shapes:
            raise _refuse(f"layer {k3.name!r}: its weights {[v.shape for v in values]} do not fit tf_keras' "
                          f"{shapes}")
        dst.set_weights(values)


def twin(model: Any) -> Any:
    """The tf_keras rebuild of a Keras 3 model, made once and given the model's current weights on every call
    (the adapter reads layers, structure and weights through it)."""
    rebuilt = _TWINS.get(model)
    if rebuilt is None:
        rebuilt = _TWINS[model] = to_tf_keras(model)
    else:
        copy_weights([(ref(), tk) for ref, tk in rebuilt._unicompress_keras3_pairs])
    return rebuilt


def write_back(model: Any) -> None:
    """Copy the twin's weights into the Keras 3 model (after `set_weights` wrote them into the twin)."""
    rebuilt = _TWINS[model]
    copy_weights([(ref(), tk) for ref, tk in rebuilt._unicompress_keras3_pairs], to_keras3=True)


def run(model: Any, inputs: Any) -> np.ndarray:
    """The Keras 3 model's own outputs (inference mode) as float32 numpy."""
    out = model(inputs, training=False)
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    elif isinstance(out, (list, tuple)):
        out = out[0]
    return np.asarray(out, dtype=np.float32)
