"""The functional graph of a tf_keras model: who feeds whom, and rebuilding it layer by layer.

`replay(model, make_layer)` rebuilds a functional model by calling new layers on new inputs node by node,
the way `Functional._run_internal_graph` runs it, with every call's own arguments. `keras.models.clone_model`
instead round-trips each call through the model config, which loses what a config cannot hold: an
`Add()([x, tf.constant(table)])` fails there ("unhashable type: 'list'"), and a `Lambda` is rebuilt from its
marshalled bytecode (losing its globals). Here constants stay the same tensors and a `Lambda` keeps its
function object. Sequential models (no constants possible) go through `clone_model` with the same
`make_layer`.

TFMOT's `quantize_apply` can only rebuild from the config; `in_memory_lambdas` makes every `Lambda` serialize
its function by a registered name for that call, so Keras never has to load Python bytecode (which it refuses
in safe mode). Where Keras still demands ``safe_mode=False`` the error names the opt-in
(``UNICOMPRESS_TF_UNSAFE_DESERIALIZATION=1``).
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

import os  # noqa: E402
import re  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Callable, Iterator, Optional  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from tf_keras.src.saving import serialization_lib  # noqa: E402
from unicompress.errors import UnicompressError  # noqa: E402

#: environment variable that lets Keras load Lambda bytecode (`safe_mode=False`) where it must
UNSAFE_ENV = "UNICOMPRESS_TF_UNSAFE_DESERIALIZATION"


class GraphRebuildError(UnicompressError, ValueError):
    """A model whose graph cannot be rebuilt (a layer without a config, a Lambda Keras will not load)."""


def unwrap(layer: Any) -> Any:
    """The layer inside TFMOT wrappers (prune_low_magnitude, quantize)."""
    while isinstance(layer, keras.layers.Wrapper):
        layer = layer.layer
    return layer


def is_graph_model(model: Any) -> bool:
    """Functional or Sequential (what TFMOT's whole-model APIs accept)."""
    return isinstance(model, keras.Sequential) or bool(getattr(model, "_is_graph_network", False))


# ---- connectivity ---------------------------------------------------------------------------------------

@dataclass
class Call:
    """One call of a layer inside the model: its inputs (producer layers, unwrapped) and arguments."""

    layer: Any  # the model's layer (maybe a TFMOT wrapper)
    node: Any
    parents: list[Any] = field(default_factory=list)  # producer layers of its keras inputs, unwrapped, in order

    def args(self) -> tuple[list, dict]:
        return list(self.node.call_args), dict(self.node.call_kwargs)


@dataclass
class Graph:
    """Calls of a functional model's layers, in topological order, with producer and consumer links."""

    calls: list[Call]
    order: dict[int, int]  # id(unwrapped layer) -> position of its first call
    consumers: dict[int, list[Any]]  # id(unwrapped layer) -> unwrapped layers that consume its outputs
    outputs: list[Any]  # unwrapped layers producing the model's outputs, in output order

    def calls_of(self, layer: Any) -> list[Call]:
        return [c for c in self.calls if unwrap(c.layer) is layer]

    def producers(self, layer: Any) -> list[Any]:
        """Producer layers of the first call of `layer` (unwrapped, with repeats for repeated inputs)."""
        calls = self.calls_of(layer)
        return calls[0].parents if calls else []


def nodes_in_order(model: Any) -> Iterator[Any]:
    """The model's own nodes, inputs first (the order `_run_internal_graph` runs them)."""
    by_depth = model._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        yield from by_depth[depth]


def graph(model: Any) -> Optional[Graph]:
    """The call graph of a functional/Sequential model, or None for a subclassed one."""
    if not is_graph_model(model) or not hasattr(model, "_nodes_by_depth"):
        return None
    calls, order, consumers = [], {}, {}
    for node in nodes_in_order(model):
        layer = node.layer
        parents = [unwrap(kt._keras_history.layer) for kt in node.keras_inputs]
        calls.append(Call(layer, node, parents))
        order.setdefault(id(unwrap(layer)), len(calls) - 1)
        for p in parents:
            consumers.setdefault(id(p), []).append(unwrap(layer))
    outputs = [unwrap(t._keras_history.layer) for t in model.outputs]
    return Graph(calls, order, consumers, outputs)


# ---- cloning one layer ------------------------------------------------------------------------------------

def clone_layer(layer: Any) -> Any:
    """A new, unbuilt layer with the same configuration (a Lambda keeps its function object).

    Raises GraphRebuildError naming the layer when its class has no working get_config/from_config.
    """
    if isinstance(layer, keras.layers.Lambda):
        return _clone_lambda(layer)
    if isinstance(layer, keras.Model):
        return copy_graph(layer) if is_graph_model(layer) else _fail(layer, "a subclassed model inside the graph")
    try:
        new = layer.__class__.from_config(layer.get_config())
        _build_attention_like(unwrap(new), unwrap(layer))
        return new
    except NotImplementedError:
        return _fail(layer, "its class has no get_config()")
    except ValueError as err:
        if "safe_mode" in str(err):
            raise unsafe_error(err) from None
        raise


def _build_attention_like(new: Any, old: Any) -> None:
    """A MultiHeadAttention from its config has its EinsumDense projections but not their kernels until it is
    called; a TFMOT QuantizeWrapper around it needs them at build time. Build them with the old shapes."""
    if not isinstance(new, keras.layers.MultiHeadAttention) or not old.built:
        return
    for attr in ("_query_dense", "_key_dense", "_value_dense", "_output_dense"):
        sub, shape = getattr(new, attr, None), getattr(getattr(old, attr, None), "_build_input_shape", None)
        if sub is not None and not sub.built and shape is not None:
            sub.build(shape)


def _clone_lambda(layer: Any) -> Any:
    """A Lambda with the same function object: no bytecode round trip (Keras' safe mode refuses it, and
    a reloaded lambda loses its module globals)."""
    new = keras.layers.Lambda(layer.function, output_shape=layer._output_shape, mask=layer.mask,
                              arguments=dict(layer.arguments), name=layer.name, dtype=layer.dtype_policy.name,
                              trainable=layer.trainable)
    return new


def _fail(layer: Any, why: str) -> Any:
    raise GraphRebuildError(f"layer {layer.name!r} ({type(layer).__name__}) cannot be rebuilt: {why}. unicompress "
                            "rebuilds functional tf_keras models layer by layer; give the layer a get_config() or "
                            "build the model from tf_keras layers")


def unsafe_error(err: Exception) -> GraphRebuildError:
    return GraphRebuildError(
        f"Keras refuses to load a Lambda layer's Python bytecode in safe mode ({str(err)[:160]}...). unicompress "
        f"rebuilds Lambda layers from their in-memory functions wherever it can; here Keras itself deserializes "
        f"the model. If you trust the model, opt in with the environment variable {UNSAFE_ENV}=1 (unicompress then "
        "passes safe_mode=False to Keras for that step), or replace the Lambda by a registered custom layer.")


# ---- rebuilding a whole model ---------------------------------------------------------------------------

def replay(model: Any, make_layer: Callable[[Any], Any], lift_constants: bool = False) -> Any:
    """The model rebuilt with `make_layer(layer)` in place of each layer (one call per layer object).

    Functional: node by node with the original call arguments (constants and Python values untouched; with
    `lift_constants` every tensor constant becomes the output of a `ConstantTensor` layer, for models that
    go through a config round trip next). Sequential: `clone_model` with `make_layer` as clone_function
    (nothing but layers to carry). Weights are not copied: the caller decides (see `copy_graph`).
    """
    made: dict[int, Any] = {}

    def new_layer(layer: Any) -> Any:
        if id(layer) not in made:
            made[id(layer)] = make_layer(layer)
        return made[id(layer)]

    if isinstance(model, keras.Sequential):
        return keras.models.clone_model(model, clone_function=new_layer)
    tensors: dict[int, Any] = {}
    for x in model.inputs:
        src = x._keras_history.layer
        tensors[id(x)] = keras.Input(batch_shape=x.shape, dtype=x.dtype, name=src.name,
                                     sparse=getattr(src, "sparse", False), ragged=getattr(src, "ragged", False))
    anchor = tensors[id(model.inputs[0])]
    lifted: dict[int, Any] = {}
    for node in nodes_in_order(model):
        if node.is_input:
            continue
        flat = list(node._flat_arguments)
        for (_, index), kt in zip(node._keras_inputs_ids_and_indices, node.keras_inputs):
            flat[index] = tensors[id(kt)]
        if lift_constants:
            keras_args = {index for _, index in node._keras_inputs_ids_and_indices}
            for index, value in enumerate(flat):
                if index not in keras_args and _is_constant(value):
                    if id(value) not in lifted:
                        lifted[id(value)] = _lift(value, f"{node.layer.name}.constant{len(lifted)}", anchor)
                    flat[index] = lifted[id(value)]
        args, kwargs = tf.nest.pack_sequence_as((node.call_args, list(node.call_kwargs.values())), flat)
        kwargs = dict(zip(node.call_kwargs.keys(), kwargs))
        # the first argument positional, the rest by name (as the model config holds them): a TFMOT wrapper's
        # call(inputs, training, **kwargs) would otherwise take MultiHeadAttention's `value` as `training`
        names = node.layer._call_spec.arg_names[1:]
        if args and len(args) - 1 <= len(names):
            kwargs = {**dict(zip(names, args[1:])), **kwargs}
            args = args[:1]
        outputs = new_layer(node.layer)(*args, **kwargs)
        for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
            tensors[id(old)] = new
    inputs = tf.nest.map_structure(lambda t: tensors[id(t)], model._nested_inputs)
    outputs = tf.nest.map_structure(lambda t: tensors[id(t)], model._nested_outputs)
    return keras.Model(inputs, outputs, name=model.name)


def _is_constant(value: Any) -> bool:
    return (isinstance(value, (tf.Tensor, np.ndarray)) and not keras.backend.is_keras_tensor(value)
            and len(value.shape) > 0)


def constants(model: Any) -> list[np.ndarray]:
    """The tensor constants the model's calls take as arguments (e.g. a position table added with TF ops)."""
    if not is_graph_model(model) or isinstance(model, keras.Sequential):
        return []
    out = []
    for node in nodes_in_order(model):
        keras_args = {index for _, index in node._keras_inputs_ids_and_indices}
        out += [np.asarray(v) for i, v in enumerate(node._flat_arguments) if i not in keras_args and _is_constant(v)]
    return out


def _lift(value: Any, name: str, anchor: Any) -> Any:
    from .models import ConstantTensor

    array = np.asarray(value)
    return ConstantTensor(array.shape, array.dtype.name, array, name=name)(anchor)


def copy_graph(model: Any) -> Any:
    """A functional/Sequential model with new layers of the same configuration and a copy of every weight."""
    clone = replay(model, clone_layer)
    clone.set_weights(model.get_weights())
    return clone


# ---- Lambda layers through TFMOT's config round trip -------------------------------------------------------

def lambda_layers(model: Any) -> list[Any]:
    """Every Lambda of the model (unwrapped), nested graph models included."""
    out = []
    for layer in getattr(model, "layers", []):
        layer = unwrap(layer)
        if isinstance(layer, keras.layers.Lambda):
            out.append(layer)
        elif isinstance(layer, keras.Model):
            out.extend(lambda_layers(layer))
    return out


class _LambdaProxy:
    """A callable object standing in for a Lambda's function during a config round trip. Keras writes every
    Python function (named or not) into the config as marshalled bytecode; a callable that is no function is
    written by name instead and looked up in the custom objects, so the same object comes back."""

    def __init__(self, fn: Callable, name: str):
        self.unicompress_original, self.__name__ = fn, name

    def __call__(self, *args, **kwargs):
        return self.unicompress_original(*args, **kwargs)


@contextmanager
def in_memory_lambdas(model: Any) -> Iterator[dict[str, Callable]]:
    """For a config round trip (TFMOT's quantize_apply): each Lambda's function is swapped for a
    `_LambdaProxy` registered in the yielded custom objects, so Keras looks the same Python object up by name
    instead of loading bytecode (which safe mode refuses, and which loses the function's globals and
    defaults). The original functions are put back on `model` afterwards; call `restore_lambdas` on the
    rebuilt model. With UNICOMPRESS_TF_UNSAFE_DESERIALIZATION=1 Keras' safe mode is off for the block."""
    swapped, registry = [], {}
    for layer in lambda_layers(model):
        name = "unicompress_lambda_" + re.sub(r"\W", "_", layer.name)
        proxy = _LambdaProxy(layer.function, name)
        registry[name] = proxy
        swapped.append((layer, layer.function))
        layer.function = proxy
    unsafe = os.environ.get(UNSAFE_ENV, "") == "1"
    try:
        if unsafe:
            with serialization_lib.SafeModeScope(False):
                yield registry
        else:
            yield registry
    except ValueError as err:
        if "safe_mode" in str(err):
            raise unsafe_error(err) from None
        raise
    finally:
        for layer, fn in swapped:
            layer.function = fn


def restore_lambdas(model: Any, like: Any) -> None:
    """Give the Lambdas of a model rebuilt by `in_memory_lambdas` their original function objects (and
    call conventions) back, matched by layer name with those of `like`."""
    originals = {layer.name: layer for layer in lambda_layers(like)}
    for layer in lambda_layers(model):
        old = originals.get(layer.name)
        fn = getattr(layer.function, "unicompress_original", None)
        if old is not None:
            layer.function = old.function if fn is None else fn
            for attr in ("_fn_expects_training_arg", "_fn_expects_mask_arg"):
                if hasattr(old, attr):
                    setattr(layer, attr, getattr(old, attr))
