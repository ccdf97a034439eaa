"""The TFLite side of TensorFlow quantization: the converter's flatbuffers and the edits that make them
honour a layer selection.

- `TFLiteModel`: a flatbuffer with the float Keras model it came from; runs in tf.lite.Interpreter and
  reads its integer weights back.
- Dynamic range: the converter quantizes every constant of >= 1024 elements whatever the selector says
  (no option for it: tensorflow/tensorflow#62923); `keep_float_outside` edits the flatbuffer with
  TensorFlow's own `flatbuffer_utils` so every constant outside the selected Dense kernels gets its
  original float32 weights back (the ops then run as float kernels).
- Full int8 for a static model's native export: the converter calibrates the float model on the
  calibration batches (`_experimental_calibrate_only`) and `convert.mlir_quantize` quantizes with every
  op but the selected FULLY_CONNECTED denylisted (`tflite_full_int8`).
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

import weakref  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from unicompress.backend.types import Inputs, QuantizedTensor  # noqa: E402
from unicompress.errors import UnicompressError  # noqa: E402
from unicompress.specs import QuantGranularity, QuantizationSpec, Scheme  # noqa: E402

from . import layers as L  # noqa: E402
from .graph import constants as graph_constants  # noqa: E402


class QuantizationNotSupportedError(UnicompressError, ValueError):
    """A quantization setting this backend cannot honour."""


class TFLiteModel:
    """A TFLite flatbuffer from the converter, with the float Keras model it was converted from
    (for layer names and structure). `run` uses tf.lite.Interpreter's signature runner."""

    def __init__(self, flatbuffer: bytes, keras_model: keras.Model, mode: str):
        self.flatbuffer, self.keras_model, self.mode = flatbuffer, keras_model, mode
        self._interpreter: Optional[tf.lite.Interpreter] = None

    @property
    def interpreter(self) -> tf.lite.Interpreter:
        if self._interpreter is None:
            self._interpreter = tf.lite.Interpreter(model_content=self.flatbuffer, num_threads=1)
            self._interpreter.allocate_tensors()
        return self._interpreter

    def copy(self) -> "TFLiteModel":
        return TFLiteModel(self.flatbuffer, L.copy_model(self.keras_model), self.mode)

    def run(self, inputs: Inputs) -> np.ndarray:
        runner = self.interpreter.get_signature_runner()
        details = runner.get_input_details()
        feeds = {k: np.asarray(inputs[k]).astype(d["dtype"]) for k, d in details.items()}
        out = runner(**feeds)
        return np.asarray(next(iter(out.values())), np.float32)

    def quantized_weights(self) -> dict[str, QuantizedTensor]:
        """Integer FULLY_CONNECTED weights ([out, in], as TFLite stores them) with scale and zero-point."""
        it = self.interpreter
        names = set(L.named_layers(self.keras_model))
        details = {d["index"]: d for d in it.get_tensor_details()}
        out = {}
        for op in it._get_ops_details():
            if op["op_name"] != "FULLY_CONNECTED":
                continue
            d = details[op["inputs"][1]]
            if d["dtype"] not in (np.int8, np.uint8):
                continue
            layer = _owning_layer(d["name"].encode(), names)
            if layer is None or layer in out:
                continue
            qp = d["quantization_parameters"]
            # with per-channel switched off TFLite still stores one (equal) scale per row
            per_channel = np.unique(qp["scales"]).size > 1
            out[layer] = QuantizedTensor(
                q=it.get_tensor(d["index"]).astype(np.int64),
                scale=qp["scales"].astype(np.float64) if per_channel else np.float64(qp["scales"][0]),
                zero_point=qp["zero_points"].astype(np.int64) if per_channel else np.int64(qp["zero_points"][0]),
                bits=8, axis=0 if per_channel else None)
        return out

    def dequantized_weights(self, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """Weights as the flatbuffer holds them: dequantized where quantized, else the float originals."""
        weights = L.get_weights(self.keras_model, names)
        for name, t in self.quantized_weights().items():
            if name in weights:
                weights[name] = t.dequantize().astype(np.float32)
        return weights


def dynamic_range_converter(model: keras.Model, spec: QuantizationSpec) -> tf.lite.TFLiteConverter:
    """The TFLite converter set for dynamic range (Optimize.DEFAULT, no representative dataset)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # the only per-tensor switch for Dense weights (an experimental converter attribute)
    converter._experimental_disable_per_channel_quantization_for_dense_layers = \
        spec.granularity is QuantGranularity.per_tensor
    return converter


#: the dynamic-range quantizer's size threshold (TFLite's `minimum_elements_for_weights`, not exposed in Python)
TFLITE_MIN_ELEMENTS = 1024


def _op_name(fb: Any, op: Any) -> str:
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.opcode_to_name(fb, op.opcodeIndex)


def _dequantized(t: Any, data: np.ndarray) -> np.ndarray:
    """Float values of a quantized constant (per-axis along `quantizedDimension`)."""
    qp = t.quantization
    scale, zp = np.asarray(qp.scale, np.float64), np.asarray(qp.zeroPoint, np.float64)
    shape = [1] * data.ndim
    if scale.size > 1:
        shape[qp.quantizedDimension] = -1
    return (data.astype(np.float64) - zp.reshape(shape)) * scale.reshape(shape)


def _float_original(t: Any, data: np.ndarray, candidates: Sequence[np.ndarray]) -> Optional[np.ndarray]:
    """The float array (in TFLite's layout) this quantized constant was made from: among the Keras weights
    (and their transposes), the one of the same shape within half a quantization step of its values."""
    deq = _dequantized(t, data)
    step = float(np.max(t.quantization.scale))
    for c in candidates:
        for arr in (c, c.T) if c.ndim == 2 else (c,):
            if arr.shape == deq.shape and np.max(np.abs(arr - deq)) <= 0.5 * step + 1e-6:
                return np.ascontiguousarray(arr, np.float32)
    return None


def keep_float_outside(flatbuffer: bytes, model: keras.Model, selected: Sequence[str]) -> bytes:
    """Undo the converter's weight quantization everywhere but in the kernels of the `selected` Dense layers.

    The TFLite converter has no layer selection for dynamic range (tensorflow/tensorflow#62923). We edit
    its flatbuffer with TensorFlow's own `flatbuffer_utils` (the ModelT object API): every quantized
    constant that is not a selected Dense kernel gets back the original float32 weights of the Keras model
    (bit-identical, not dequantized integers), type FLOAT32 and no quantization parameters. The kernels
    of hybrid ops (FULLY_CONNECTED, ...) are chosen by weight type, so those ops run as float ops. A
    quantized embedding table feeds GATHER -> DEQUANTIZE: the GATHER's output becomes float and the
    DEQUANTIZE is removed (its readers read the GATHER's output).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    fb = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    named = L.named_layers(model)
    selected = set(selected)
    kernels = L.get_weights(model, sorted(selected))  # neutral [out, in]: TFLite's FULLY_CONNECTED layout
    # MultiHeadAttention's 3-D kernels reach TFLite as 2-D FULLY_CONNECTED weights: their neutral views too
    everything = [w.numpy() for w in model.weights if w.dtype == tf.float32] + list(L.get_weights(model).values())
    everything += [c for c in graph_constants(model) if c.dtype == np.float32]  # a position table added with TF ops
    buffer_users: dict[int, int] = {}
    for g in fb.subgraphs:
        for t in g.tensors:
            buffer_users[t.buffer] = buffer_users.get(t.buffer, 0) + 1
    int_types = (schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.INT16, schema.TensorType.INT4)
    for subgraph, g in enumerate(fb.subgraphs):
        restored = set()
        for index, t in enumerate(g.tensors):
            buf = fb.buffers[t.buffer].data if t.buffer < len(fb.buffers) else None
            if t.type not in int_types or buf is None or len(buf) == 0 or t.quantization is None \
                    or t.quantization.scale is None or len(t.quantization.scale) == 0:
                continue  # not a quantized constant
            dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.UINT8: np.uint8,
                     schema.TensorType.INT16: np.int16}.get(t.type)
            if dtype is None:
                raise QuantizationNotSupportedError(f"TFLite constant {t.name!r}: unexpected packed integer type")
            data = np.frombuffer(bytes(buf), dtype).reshape(list(t.shape))
            owner = _owning_layer(t.name, named)
            if owner in selected and _float_original(t, data, [kernels[owner]]) is not None:
                continue  # a selected Dense kernel: stays int8
            original = _float_original(t, data, everything)
            if original is None:
                raise QuantizationNotSupportedError(
                    f"TFLite quantized the constant {t.name.decode(errors='replace')!r} outside the selection and "
                    "no Keras weight matches it: cannot restore it to float")
            raw = np.frombuffer(original.astype("<f4").tobytes(), np.uint8)
            if buffer_users[t.buffer] > 1:  # a shared buffer: give this tensor its own
                fb.buffers.append(schema.BufferT())
                t.buffer = len(fb.buffers) - 1
            fb.buffers[t.buffer].data = raw
            t.type, t.quantization = schema.TensorType.FLOAT32, None
            restored.add(index)
        _float_ops(fb, subgraph, restored)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fb))


def _owning_layer(tensor_name: bytes, named: Any) -> Optional[str]:
    """The layer a TFLite tensor name belongs to ("model/<layer>/..."; fused names are joined by ';'; a
    MultiHeadAttention projection is "model/<mha>/query/einsum/...", neutral name "<mha>.query")."""
    parts = tensor_name.decode(errors="replace").replace(";", "/").split("/")
    for i, part in enumerate(parts):
        if i + 1 < len(parts) and f"{part}.{parts[i + 1]}" in named:
            return f"{part}.{parts[i + 1]}"
        if part in named:
            return part
    return None


def _float_ops(fb: Any, subgraph: int, restored: set) -> None:
    """After restoring constants: the ops reading them lose the hybrid flag, a GATHER from a restored
    table outputs float, and a DEQUANTIZE of a float tensor (the one that followed the GATHER, or one
    reading a restored constant) is dropped."""
    from tensorflow.lite.python import schema_py_generated as schema

    g = fb.subgraphs[subgraph]
    for op in g.operators:
        if not restored.intersection(op.inputs):
            continue
        if _op_name(fb, op) == "GATHER" and op.inputs[0] in restored:
            out = g.tensors[op.outputs[0]]
            out.type, out.quantization = schema.TensorType.FLOAT32, None
        # the hybrid flag (quantize the float input at run time) means nothing to a float kernel, but
        # tf2onnx honours it with DynamicQuantizeLinear on every input, the float weights included
        if getattr(op.builtinOptions, "asymmetricQuantizeInputs", False):
            op.builtinOptions.asymmetricQuantizeInputs = False
    rename: dict[int, int] = {}
    kept = []
    for op in g.operators:
        if _op_name(fb, op) == "DEQUANTIZE" and g.tensors[op.inputs[0]].type == schema.TensorType.FLOAT32:
            rename[op.outputs[0]] = op.inputs[0]
            continue
        kept.append(op)
    if not rename:
        return
    for op in kept:
        op.inputs = [rename.get(i, i) for i in op.inputs]
    g.outputs = [rename.get(i, i) for i in g.outputs]
    for sig in fb.signatureDefs or []:
        if sig.subgraphIndex == subgraph:
            for out in sig.outputs or []:
                out.tensorIndex = rename.get(out.tensorIndex, out.tensorIndex)
    g.operators = kept


@dataclass(frozen=True)
class StaticInt8:
    """What the TFLite full-int8 export of a static model needs: the float model it was made from, the
    calibration batches (the converter's representative dataset) and the Dense layers to quantize."""

    float_model: keras.Model
    batches: tuple
    layers: tuple
    per_channel: bool


#: static models whose spec TFLite's int8 kernels can honour -> their StaticInt8 (dies with the model)
_STATIC_INT8: "weakref.WeakKeyDictionary[keras.Model, StaticInt8]" = weakref.WeakKeyDictionary()


def tflite_int8_problems(spec: QuantizationSpec) -> list[str]:
    """Why TFLite's int8 kernels cannot run this static spec (then the native export keeps TFMOT's fake-quant)."""
    problems = []
    if spec.bits != 8 or spec.activation_bits != 8 or spec.mapping.value != "linear":
        problems.append("TFLite int8 kernels need 8-bit linear weights and activations")
    if spec.scheme is not Scheme.symmetric or not spec.narrow_range:
        problems.append("TFLite int8 weights are symmetric narrow-range")
    if spec.activation_scheme is Scheme.symmetric:
        problems.append("TFLite int8 activations are asymmetric (a zero-point)")
    if any(o.bits not in (None, 8) or o.scheme not in (None, spec.scheme) or o.granularity not in
           (None, spec.granularity) for o in spec.overrides if not o.skip):
        problems.append("TFLite's quantizer has no per-layer bits/scheme/granularity")
    return problems


def static_int8_flatbuffer(model: Any) -> Optional[bytes]:
    """The TFLite full-int8 flatbuffer of a static model (None when its spec needs TFMOT's fake-quant)."""
    info = _STATIC_INT8.get(model) if isinstance(model, keras.Model) else None
    if info is None:
        return None
    return tflite_full_int8(info.float_model, info.batches, info.layers, info.per_channel)


def tflite_full_int8(model: keras.Model, batches: Sequence[Inputs], selected: Sequence[str],
                     per_channel: bool = True) -> bytes:
    """Integer FULLY_CONNECTED for the `selected` Dense layers only, everything else float, with TFLite's
    own calibration and quantizer (what tf.lite.experimental.QuantizationDebugger does):

    1. the converter with a representative dataset and `_experimental_calibrate_only`: a float flatbuffer
       carrying the min/max of every tensor over the batches;
    2. `convert.mlir_quantize` with every op type but FULLY_CONNECTED denylisted, and the unselected
       FULLY_CONNECTED ops (pooler, classifier, ...) denylisted by node (their output tensor name).

    The plain full-int8 conversion (`Optimize.DEFAULT` + representative dataset) quantizes softmax,
    LayerNorm and GELU too (97.65% -> 78.4% on MiniLM-BBC); this one leaves them float.
    """
    from tensorflow.lite.python import convert
    from tensorflow.lite.tools import flatbuffer_utils

    order = [t.name.split(":")[0] for t in model.inputs]  # from_keras_model feeds model.inputs by position
    if not batches:
        raise QuantizationNotSupportedError("the TFLite int8 export needs calibration batches")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([np.asarray(x[k]) for k in order] for x in batches)
    converter._experimental_calibrate_only = True  # TFLite's calibrator only; quantized below
    calibrated = converter.convert()
    fb = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    g, named, keep = fb.subgraphs[0], L.named_layers(model), set(selected)
    op_types, unselected = set(), []
    for op in g.operators:
        kind = _op_name(fb, op)
        op_types.add(kind)
        if kind == "FULLY_CONNECTED" and _owning_layer(g.tensors[op.inputs[1]].name, named) not in keep:
            unselected.append(g.tensors[op.outputs[0]].name.decode())
    flatbuffer = convert.mlir_quantize(calibrated, disable_per_channel=not per_channel, fully_quantize=False,
                                       denylisted_ops=sorted(op_types - {"FULLY_CONNECTED"}),
                                       denylisted_nodes=unselected)
    got = set(int8_fully_connected(flatbuffer, named))
    if got != keep:
        raise QuantizationNotSupportedError(f"TFLite's quantizer made {sorted(got ^ keep)[:4]} differ from the "
                                            "selection")
    return bytes(flatbuffer)


def int8_fully_connected(flatbuffer: bytes, named: dict[str, Any]) -> list[str]:
    """Layers whose FULLY_CONNECTED op has int8 input and int8 weights (integer kernels) in a flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    fb = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    g = fb.subgraphs[0]
    return [_owning_layer(g.tensors[op.inputs[1]].name, named) for op in g.operators
            if _op_name(fb, op) == "FULLY_CONNECTED"
            and g.tensors[op.inputs[0]].type == g.tensors[op.inputs[1]].type == schema.TensorType.INT8]


def remember_static(quantized: keras.Model, info: StaticInt8) -> None:
    """Keep what the int8 export of a static model needs, for as long as the model lives."""
    _STATIC_INT8[quantized] = info
