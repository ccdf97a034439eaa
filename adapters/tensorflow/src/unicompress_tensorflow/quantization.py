"""QuantizationSpec -> TFMOT quantization wrappers (qat, weight_only, static) or the TFLite converter (dynamic).

- qat, weight_only: `quantize_annotate_layer` on the selected Dense layers with our QuantizeConfigs
  (TFMOT's LastValueQuantizer / MovingAverageQuantizer configured from the spec: bits, per-axis,
  symmetric, narrow_range), then `quantize_apply`; qat fine-tunes. TFMOT's `quantize_model` refuses the
  Transformer's LayerNormalization and custom layers; in qat we annotate LayerNormalization with an
  output-only config so its activations are fake-quantized too.
- static: the same weight configs, and `quantize_apply` with a scheme whose layout transform (a TFMOT
  ModelTransformer `Transform`) puts a TFMOT `QuantizeLayer(AllValuesQuantizer)` on the input of each
  selected Dense and nowhere else. The calibration batches go through the model in training mode (no
  optimizer step): the AllValuesQuantizers record the running min/max of each input (min/max
  calibration, computed by TFMOT). Softmax, LayerNorm, GELU, the attention MatMuls, the residuals and
  the unselected layers stay float, as the spec says. (The TFLite full-int8 converter used before
  quantized all of those too: 97.65% -> 78.4% on MiniLM-BBC, and a slow tf2onnx QDQ graph.)
  Its native export (`tflite.static_int8_flatbuffer`) is TFLite's own int8 model of the float model, calibrated
  by the TFLite converter on the same batches and quantized by TFLite's MLIR quantizer with denylists, so
  that only the selected Dense layers get integer kernels.
- dynamic: the TFLite dynamic-range converter. The model becomes a `TFLiteModel` (flatbuffer + the
  float Keras model for names). The converter quantizes every constant of >= 1024 elements whatever the
  selector says; `tflite.keep_float_outside` edits its flatbuffer (TensorFlow's flatbuffer_utils) to put the
  original float32 weights back everywhere but in the selected Dense kernels.
- mapping log: a fake-quant quantizer of ours (emulated), weight_only/qat only.

`quantized_weights` reads integers, scales and zero-points from what the toolkit produced: the
TFLite tensors' quantization parameters, or the fake-quant min/max variables of the weight quantizers.
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Iterator, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_scheme import \
    Default8BitQuantizeScheme  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.quantize_registry import \
    QuantizeRegistry  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras import \
    quantize_layout_transform  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras import utils as tfmot_utils  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import \
    QuantizeLayer  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import \
    model_transformer, transforms  # noqa: E402
from unicompress.backend.adapter import StageContext  # noqa: E402
from unicompress.backend.plan import StagePlan  # noqa: E402
from unicompress.backend.types import LayerStats, QuantizedTensor, TaskData  # noqa: E402
from unicompress.specs import QuantGranularity, QuantizationSpec, QuantMode, Scheme  # noqa: E402

from . import layers as L  # noqa: E402
from .capabilities import dynamic_range_refusals  # noqa: E402
from .discovery import MHA_PARTS  # noqa: E402
from .graph import in_memory_lambdas, replay, restore_lambdas  # noqa: E402
from .models import custom_objects  # noqa: E402
from .tflite import (TFLITE_MIN_ELEMENTS, QuantizationNotSupportedError, StaticInt8, TFLiteModel,  # noqa: E402
                     dynamic_range_converter, keep_float_outside, remember_static, tflite_int8_problems)
from .training import train  # noqa: E402

tfq = tfmot.quantization.keras
QuantizeWrapper = tfq.QuantizeWrapperV2
_PART_ATTR = dict(MHA_PARTS)


# ---- per-layer settings (the core's plan) -----------------------------------------------------------------

@dataclass(frozen=True)
class LayerQuant:
    """The settings of one layer as the plan resolved them (`StagePlan.settings`, the core's override rule)."""

    bits: int
    per_channel: bool
    symmetric: bool
    skip: bool = False


def plan_settings(plan: StagePlan) -> dict[str, LayerQuant]:
    """Settings of every layer the plan quantizes (the selected layers minus `skip` overrides), in model order."""
    out = {}
    for name in plan.selected:
        s = plan.settings[name]
        out[name] = LayerQuant(int(s["bits"]), QuantGranularity(s["granularity"]) is QuantGranularity.per_channel,
                               Scheme(s["scheme"]) is Scheme.symmetric, bool(s.get("skip", False)))
    return out


def selected_dense(model: Any, spec: QuantizationSpec) -> list[str]:
    """Names of the layers the core's planner quantizes for `spec` on `model` (Dense and EinsumDense)."""
    from unicompress.planner import plan_stage

    from .backend import TensorFlowAdapter

    return list(plan_stage(TensorFlowAdapter(), model, spec).selected)


def _targets(model: Any, settings: dict[str, LayerQuant]) -> tuple[dict[str, LayerQuant], dict[str, dict]]:
    """({top-level Dense: settings}, {MultiHeadAttention: {part: settings}}) of the planned layers; a planned
    layer of another kind is refused (the core plans only `weight_kinds`, all of which these two cover)."""
    top = {L.unwrap(layer).name: L.unwrap(layer) for layer in model.layers}
    dense, mha = {}, {}
    for name, s in settings.items():
        base, _, part = name.rpartition(".")
        if isinstance(top.get(name), keras.layers.Dense):
            dense[name] = s
        elif isinstance(top.get(base), keras.layers.MultiHeadAttention) and part in _PART_ATTR:
            mha.setdefault(base, {})[part] = s
        else:
            raise QuantizationNotSupportedError(
                f"layer {name!r} is planned for quantization but is neither a top-level Dense nor a "
                "MultiHeadAttention projection (e.g. a low-rank factor): exclude it with selector.exclude")
    return dense, mha


# ---- TFMOT quantizers and configs ----------------------------------------------------------------

@keras.utils.register_keras_serializable("unicompress")
class LogWeightQuantizer(tfq.quantizers.Quantizer):
    """Emulated logarithmic fake-quant: |w| -> S * base^-q, S = max|w| per output channel (kernel axis -1),
    q in [0, 2^(b-1)-1]; values below the smallest level become zero. Straight-through gradient."""

    def __init__(self, num_bits: int, base: float = 2.0, per_axis: bool = True):
        self.num_bits, self.base, self.per_axis = int(num_bits), float(base), bool(per_axis)

    def build(self, tensor_shape, name, layer):
        return {}

    def codes(self, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(q, sign with 0 for underflow, scale) of a kernel [in, out]."""
        axes = list(range(len(w.shape) - 1)) if self.per_axis else None
        scale = tf.maximum(tf.reduce_max(tf.abs(w), axis=axes, keepdims=True), np.finfo(np.float32).eps)
        qmax = 2 ** (self.num_bits - 1) - 1
        k = -tf.math.log(tf.abs(w) / scale) / np.log(self.base)
        underflow = tf.logical_or(tf.logical_not(tf.math.is_finite(k)), k > qmax + 0.5)
        q = tf.clip_by_value(tf.where(underflow, float(qmax), tf.round(k)), 0.0, float(qmax))
        sign = tf.where(underflow, 0.0, tf.sign(w))
        return q, sign, scale

    def __call__(self, inputs, training, weights, **kwargs):
        q, sign, scale = self.codes(inputs)
        out = sign * scale * tf.pow(self.base, -q)
        return inputs + tf.stop_gradient(out - inputs)

    def get_config(self) -> dict:
        return {"num_bits": self.num_bits, "base": self.base, "per_axis": self.per_axis}


@keras.utils.register_keras_serializable("unicompress")
class DenseQuantizeConfig(tfq.QuantizeConfig):
    """Kernel fake-quant as the spec says (per-axis = per output channel of [in, out]); optional output
    activation fake-quant (qat); no activation quantizer inside Dense (our Dense layers are linear)."""

    def __init__(self, bits: int, per_channel: bool, symmetric: bool, narrow_range: bool = True,
                 activation_bits: Optional[int] = None, activation_symmetric: bool = False,
                 mapping: str = "linear", base: float = 2.0, calibrate: bool = False):
        self.bits, self.per_channel, self.symmetric = int(bits), bool(per_channel), bool(symmetric)
        self.narrow_range, self.activation_bits = bool(narrow_range), activation_bits
        self.activation_symmetric, self.mapping, self.base = bool(activation_symmetric), mapping, float(base)
        self.calibrate = bool(calibrate)

    def weight_quantizer(self):
        if self.mapping == "log":
            return LogWeightQuantizer(self.bits, self.base, self.per_channel)
        # narrow_range only means something for the symmetric grid; asymmetric uses [0, 2^b - 1]
        return tfq.quantizers.LastValueQuantizer(num_bits=self.bits, per_axis=self.per_channel,
                                                 symmetric=self.symmetric,
                                                 narrow_range=self.narrow_range and self.symmetric)

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, self.weight_quantizer())]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        if self.activation_bits is None:
            return []
        return [activation_quantizer(self.activation_bits, self.activation_symmetric, self.calibrate)]

    def get_config(self) -> dict:
        return {"bits": self.bits, "per_channel": self.per_channel, "symmetric": self.symmetric,
                "narrow_range": self.narrow_range, "activation_bits": self.activation_bits,
                "activation_symmetric": self.activation_symmetric, "mapping": self.mapping, "base": self.base,
                "calibrate": self.calibrate}


@keras.utils.register_keras_serializable("unicompress")
class FlatKernelQuantizer(tfq.quantizers.Quantizer):
    """A weight quantizer that sees an EinsumDense kernel as the Dense kernel it is: [in, heads, d] as
    [in, heads * d], [heads, d, out] as [heads * d, out]. TFMOT's per-axis quantizers take the last axis as
    the channel, which for Q/K/V would be d alone (one scale shared by every head); here each of the
    heads * d output units has its own, as a Dense (and the neutral [out, in] layout) has."""

    def __init__(self, inner: Any, flat_shape: Sequence[int]):
        self.inner = inner if not isinstance(inner, dict) else keras.utils.deserialize_keras_object(inner)
        self.flat_shape = [int(d) for d in flat_shape]

    def build(self, tensor_shape, name, layer):
        return self.inner.build(tf.TensorShape(self.flat_shape), name, layer)

    def __call__(self, inputs, training, weights, **kwargs):
        flat = tf.reshape(inputs, self.flat_shape)
        return tf.reshape(self.inner(flat, training, weights, **kwargs), tf.shape(inputs))

    def get_config(self) -> dict:
        return {"inner": keras.utils.serialize_keras_object(self.inner), "flat_shape": self.flat_shape}

    def __getattr__(self, name: str) -> Any:  # num_bits, per_axis, symmetric, ... of the inner quantizer
        if name in ("inner", "flat_shape"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def flat_kernel_shape(part: str, kernel_shape: Sequence[int]) -> list[int]:
    """The [in, out] (Dense) shape of an MHA projection kernel."""
    shape = [int(d) for d in kernel_shape]
    if part == "attention_output":
        return [int(np.prod(shape[:-1])), shape[-1]]
    return [shape[0], int(np.prod(shape[1:]))]


@keras.utils.register_keras_serializable("unicompress")
class MultiHeadAttentionQuantizeConfig(tfq.QuantizeConfig):
    """TFMOT QuantizeConfig for keras MultiHeadAttention (TFMOT has none): the selected Q/K/V/O EinsumDense
    kernels fake-quantized like Dense kernels (`FlatKernelQuantizer`), each with its own settings; with
    `input_bits` a fake-quant on the input of each selected projection, the attention context before O
    included (a TFMOT QuantizeAwareActivation run on the projection's input): min/max-calibrated (static,
    `calibrate`) or with EMA ranges (qat). TFMOT's output quantizers need `compute_output_shape`, which
    MultiHeadAttention cannot answer from one input shape, so qat quantizes its inputs, not its output."""

    def __init__(self, parts: dict, narrow_range: bool = True, mapping: str = "linear", base: float = 2.0,
                 input_bits: Optional[int] = None, activation_symmetric: bool = False, calibrate: bool = True):
        self.parts = {p: dict(v) for p, v in parts.items()}  # part -> {bits, per_channel, symmetric}
        self.narrow_range, self.mapping, self.base = bool(narrow_range), mapping, float(base)
        self.input_bits, self.activation_symmetric = input_bits, bool(activation_symmetric)
        self.calibrate = bool(calibrate)

    def _order(self) -> list[str]:
        return [p for p, _ in MHA_PARTS if p in self.parts]

    def get_weights_and_quantizers(self, layer):
        out = []
        for part in self._order():
            sub = getattr(layer, _PART_ATTR[part])
            s = self.parts[part]
            inner = DenseQuantizeConfig(s["bits"], s["per_channel"], s["symmetric"], self.narrow_range,
                                        mapping=self.mapping, base=self.base).weight_quantizer()
            out.append((sub.kernel, FlatKernelQuantizer(inner, flat_kernel_shape(part, sub.kernel.shape))))
        return out

    def get_activations_and_quantizers(self, layer):
        if self.input_bits is None:
            return []
        return [(keras.activations.linear,
                 activation_quantizer(self.input_bits, self.activation_symmetric, self.calibrate))
                for _ in self._order()]

    def set_quantize_weights(self, layer, quantize_weights):
        for part, weight in zip(self._order(), quantize_weights):
            sub = getattr(layer, _PART_ATTR[part])
            if isinstance(sub.kernel, tf.Variable):
                L.remember_float_kernel(sub, sub.kernel)
            sub.kernel = weight

    def set_quantize_activations(self, layer, quantize_activations):
        for part, quant in zip(self._order(), quantize_activations):
            sub = getattr(layer, _PART_ATTR[part])
            plain = sub.__dict__.get("_unicompress_plain_call") or sub.call
            sub._unicompress_plain_call = plain
            sub.call = lambda x, _plain=plain, _quant=quant: _plain(_quant(x))  # fake-quantize the input

    def get_output_quantizers(self, layer):
        return []

    def get_config(self) -> dict:
        return {"parts": self.parts, "narrow_range": self.narrow_range, "mapping": self.mapping, "base": self.base,
                "input_bits": self.input_bits, "activation_symmetric": self.activation_symmetric,
                "calibrate": self.calibrate}


def activation_quantizer(bits: int, symmetric: bool, calibrate: bool) -> Any:
    """QAT: TFMOT's MovingAverageQuantizer (EMA of ranges); static calibration: AllValuesQuantizer
    (the running min and max of everything seen = min/max calibration)."""
    cls = tfq.quantizers.AllValuesQuantizer if calibrate else tfq.quantizers.MovingAverageQuantizer
    return cls(num_bits=bits, per_axis=False, symmetric=symmetric, narrow_range=False)


@keras.utils.register_keras_serializable("unicompress")
class OutputQuantizeConfig(tfq.QuantizeConfig):
    """For layers TFMOT refuses (LayerNormalization, custom layers): quantize the output only."""

    def __init__(self, activation_bits: int = 8, activation_symmetric: bool = False, calibrate: bool = False):
        self.activation_bits, self.activation_symmetric = int(activation_bits), bool(activation_symmetric)
        self.calibrate = bool(calibrate)

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [activation_quantizer(self.activation_bits, self.activation_symmetric, self.calibrate)]

    def get_config(self) -> dict:
        return {"activation_bits": self.activation_bits, "activation_symmetric": self.activation_symmetric,
                "calibrate": self.calibrate}


class _AnnotatedOnlyRegistry(QuantizeRegistry):
    """A registry that knows no layer: only the layers we annotated (with their own config) get quantized."""

    def supports(self, layer):
        return False

    def get_quantize_config(self, layer):
        return None


class WeightOnlyScheme(Default8BitQuantizeScheme):
    """quantize_apply without TFMOT's input quantization of annotated layers.

    TFMOT wraps the producer of every annotated layer's input in an output-only fake-quant (its
    `requires_output_quantize`): right for QAT, wrong for weight-only (the GELU before ffn_out got 8-bit
    activations, measured 7e-5 off the weights-only result on tiny-bert).
    """

    def get_quantize_registry(self):
        return _AnnotatedOnlyRegistry()


INPUT_QUANTIZER_SUFFIX = ".input_quantizer"


class DenseInputQuantize(transforms.Transform):
    """TFMOT layout transform: Dense => QuantizeLayer(AllValuesQuantizer) -> Dense.

    Static PTQ quantizes the INPUT of each selected Dense (what the integer MatMul consumes), and
    nothing else: TFMOT's own mechanism (`requires_output_quantize`) would fake-quantize the producer's
    output instead, which also feeds the residual adds and the unselected layers. The ModelTransformer
    only offers the annotated (selected) layers as candidates, so only those get a QuantizeLayer.
    """

    def __init__(self, bits: int, symmetric: bool):
        self.bits, self.symmetric = int(bits), bool(symmetric)

    def pattern(self):
        return transforms.LayerPattern("Dense")

    def replacement(self, match_layer):
        name = match_layer.layer["config"]["name"] + INPUT_QUANTIZER_SUFFIX
        quant = QuantizeLayer(activation_quantizer(self.bits, self.symmetric, calibrate=True), name=name)
        config = tfmot_utils.serialize_layer(quant, use_legacy_format=True)
        config["name"] = name
        return transforms.LayerNode(match_layer.layer, weights=match_layer.weights,
                                    input_layers=[transforms.LayerNode(config)], metadata=match_layer.metadata,
                                    names_and_weights=match_layer.names_and_weights)

    def custom_objects(self):
        return {"QuantizeLayer": QuantizeLayer, "AllValuesQuantizer": tfq.quantizers.AllValuesQuantizer}


class _InputQuantizeLayout(quantize_layout_transform.QuantizeLayoutTransform):
    def __init__(self, bits: int, symmetric: bool):
        self.bits, self.symmetric = bits, symmetric

    def apply(self, model, layer_quantize_map):
        return model_transformer.ModelTransformer(model, [DenseInputQuantize(self.bits, self.symmetric)],
                                                  set(layer_quantize_map.keys()), layer_quantize_map).transform()


class StaticScheme(WeightOnlyScheme):
    """quantize_apply for static PTQ: the annotated Dense layers' weights (their QuantizeConfigs) and a
    calibrating QuantizeLayer on each one's input; no other tensor is touched."""

    def __init__(self, activation_bits: int, activation_symmetric: bool):
        self.activation_bits, self.activation_symmetric = activation_bits, activation_symmetric

    def get_layout_transformer(self):
        return _InputQuantizeLayout(self.activation_bits, self.activation_symmetric)


def quantize_scope():
    """The scope quantize_apply needs to clone our configs and custom layers."""
    return tfq.quantize_scope({**custom_objects(), "DenseQuantizeConfig": DenseQuantizeConfig,
                               "OutputQuantizeConfig": OutputQuantizeConfig,
                               "LogWeightQuantizer": LogWeightQuantizer, "FlatKernelQuantizer": FlatKernelQuantizer,
                               "MultiHeadAttentionQuantizeConfig": MultiHeadAttentionQuantizeConfig})


def annotate_and_apply(model: keras.Model, spec: QuantizationSpec, plan: StagePlan) -> keras.Model:
    """Annotate the planned Dense layers and MultiHeadAttention projections (and, in qat, LayerNormalization)
    and run quantize_apply."""
    settings = plan_settings(plan)
    if not settings:
        raise QuantizationNotSupportedError("the plan leaves no layer to quantize")
    dense, mha = _targets(model, settings)
    qat = spec.mode is QuantMode.qat
    static = spec.mode is QuantMode.static
    act_sym = spec.activation_scheme is Scheme.symmetric

    def annotate(layer):
        s = dense.get(layer.name)
        if s is not None:
            # static: the activation quantizer sits on the Dense input (StaticScheme), not on its output
            cfg = DenseQuantizeConfig(s.bits, s.per_channel, s.symmetric, spec.narrow_range,
                                      spec.activation_bits if qat else None, act_sym,
                                      spec.mapping.value, spec.log_base)
            return tfq.quantize_annotate_layer(layer, quantize_config=cfg)
        if layer.name in mha:
            parts = {p: {"bits": s.bits, "per_channel": s.per_channel, "symmetric": s.symmetric}
                     for p, s in mha[layer.name].items()}
            cfg = MultiHeadAttentionQuantizeConfig(parts, spec.narrow_range, spec.mapping.value, spec.log_base,
                                                   spec.activation_bits if static or qat else None, act_sym,
                                                   calibrate=static)
            return tfq.quantize_annotate_layer(layer, quantize_config=cfg)
        if qat and isinstance(layer, keras.layers.LayerNormalization):
            return tfq.quantize_annotate_layer(layer, OutputQuantizeConfig(spec.activation_bits, act_sym))
        return layer

    # qat: TFMOT's default scheme (its registry quantizes the inputs of annotated layers with EMA ranges);
    # static: min/max-calibrated QuantizeLayers on the selected Dense inputs only; weight_only: no activation
    scheme = Default8BitQuantizeScheme() if qat else \
        StaticScheme(spec.activation_bits, act_sym) if static else WeightOnlyScheme()
    annotated = replay(model, annotate, lift_constants=True)  # constants survive TFMOT's config round trip
    with in_memory_lambdas(annotated) as lambdas, quantize_scope(), keras.utils.custom_object_scope(lambdas):
        quantized = tfq.quantize_apply(annotated, scheme=scheme)
    restore_lambdas(quantized, model)
    sync_weight_ranges(quantized)
    return quantized


def sync_weight_ranges(model: keras.Model) -> None:
    """Set every weight quantizer's min/max from the current weights (TFMOT does it on training calls;
    LastValueQuantizer starts at [-6, 6], and the last optimizer step of QAT moved the weights after)."""
    for wrapper in model.layers:
        if isinstance(wrapper, QuantizeWrapper):
            for weight, quantizer, qvars in wrapper._weight_vars:
                quantizer(weight, True, weights=qvars)


# ---- TFLite dynamic range (the flatbuffer work is in tflite.py) ----------------------------------

def tflite_quantize(model: keras.Model, spec: QuantizationSpec, data: Optional[TaskData],
                    plan: StagePlan) -> TFLiteModel:
    """Dynamic-range conversion with the TFLite converter (int8 weights, activations quantized at run time),
    restricted to the selected Dense layers (`keep_float_outside`): the converter itself has no layer
    selection and quantizes every constant of >= 1024 elements (Dense kernels, embedding tables)."""
    keep = list(plan_settings(plan))
    if not keep:
        raise QuantizationNotSupportedError("the plan leaves no layer to quantize")
    flatbuffer = keep_float_outside(dynamic_range_converter(model, spec).convert(), model, keep)
    quantized = TFLiteModel(flatbuffer, model, spec.mode.value)
    missing = sorted(set(keep) - set(quantized.quantized_weights()))
    if missing:
        raise QuantizationNotSupportedError(
            f"the TFLite dynamic-range converter leaves weights of fewer than {TFLITE_MIN_ELEMENTS} elements in "
            f"float, so these selected layers stay float: {missing[:4]}; exclude them (selector.exclude) or use "
            "mode weight_only/static")
    return quantized


def tfmot_static(model: keras.Model, spec: QuantizationSpec, data: Optional[TaskData],
                 plan: Optional[StagePlan] = None) -> keras.Model:
    """Static PTQ with TFMOT: weight fake-quant on the selected Dense layers and an AllValuesQuantizer on
    each one's input, fed the calibration batches in training mode (ranges only: no optimizer step, and
    the weight quantizers are LastValueQuantizers, whose range is the current min/max of the weights)."""
    if spec.calibration.method.value != "minmax":
        raise QuantizationNotSupportedError("TFMOT calibrates activations by min/max only")
    batches = data.calibration_batches(spec.calibration.num_batches) if data is not None else []
    if not batches:
        raise QuantizationNotSupportedError("mode 'static' needs calibration data (TaskData.calibration)")
    if plan is None:  # a direct call (tests): the core's plan
        from unicompress.planner import plan_stage

        from .backend import TensorFlowAdapter

        plan = plan_stage(TensorFlowAdapter(), model, spec)
    quantized = annotate_and_apply(model, spec, plan)
    with calibration_mode(quantized):
        for x in batches:
            quantized(L.to_tensors(quantized, x), training=True)
    if not tflite_int8_problems(spec):  # the native export can then be TFLite's own int8 model (export.py)
        keep = tuple(plan_settings(plan))
        remember_static(quantized, StaticInt8(model, tuple(batches), keep,
                                              spec.granularity is QuantGranularity.per_channel))
    return quantized


@contextmanager
def calibration_mode(model: keras.Model) -> Iterator[None]:
    """Training-mode calls that only calibrate: Dropout off (rate 0) and BatchNormalization frozen
    (trainable=False makes Keras normalise with, and keep, the moving statistics); restored after."""
    dropouts = [(layer, layer.rate) for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    norms = [(layer, layer.trainable) for layer in model.layers
             if isinstance(L.unwrap(layer), keras.layers.BatchNormalization)]
    try:
        for layer, _ in dropouts:
            layer.rate = 0.0
        for layer, _ in norms:
            layer.trainable = False
        yield
    finally:
        for layer, rate in dropouts:
            layer.rate = rate
        for layer, trainable in norms:
            layer.trainable = trainable


def _check_tflite(spec: QuantizationSpec) -> None:
    problems = dynamic_range_refusals(spec)
    if problems:
        raise QuantizationNotSupportedError(f"mode {spec.mode.value!r}: " + "; ".join(map(str, problems)))


def apply_quantization(model: Any, spec: QuantizationSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """Quantize with TFMOT (qat, weight_only, static) or the TFLite converter (dynamic)."""
    if not L.is_graph_model(model):
        raise QuantizationNotSupportedError("TFMOT and the TFLite converter path need a functional or Sequential "
                                            "tf_keras model")
    if spec.mode is QuantMode.dynamic:
        _check_tflite(spec)
        return tflite_quantize(model, spec, data, ctx.plan)
    if spec.mode is QuantMode.static:
        return tfmot_static(model, spec, data, ctx.plan)
    quantized = annotate_and_apply(model, spec, ctx.plan)
    if spec.mode is QuantMode.qat:
        train(quantized, data, spec.training, ctx, description="qat")
        sync_weight_ranges(quantized)
    return quantized


# ---- reading back what the toolkit produced ----------------------------------------------------------

def _qat_tensor(weight: tf.Variable, quantizer: Any, qvars: dict) -> QuantizedTensor:
    """Integers of a fake-quantized kernel from TFMOT's min/max variables (TF's nudged grid)."""
    w = weight.numpy()
    if isinstance(quantizer, FlatKernelQuantizer):  # an MHA kernel, read as the Dense kernel it quantizes
        w, quantizer = w.reshape(quantizer.flat_shape), quantizer.inner
    if isinstance(quantizer, LogWeightQuantizer):
        q, sign, scale = (t.numpy() for t in quantizer.codes(tf.constant(w)))
        per = quantizer.per_axis
        return QuantizedTensor(q=q.T.astype(np.int64), scale=scale.reshape(-1) if per else np.float64(scale.max()),
                               zero_point=np.zeros(scale.size if per else (), np.int64), bits=quantizer.num_bits,
                               axis=0 if per else None, mapping="log", sign=sign.T.astype(np.int8),
                               base=quantizer.base)
    bits, narrow, per_axis = quantizer.num_bits, quantizer.narrow_range, quantizer.per_axis
    lo, hi = qvars["min_var"].numpy().astype(np.float64), qvars["max_var"].numpy().astype(np.float64)
    if per_axis:
        fq = tf.quantization.fake_quant_with_min_max_vars_per_channel(w, lo.astype(np.float32), hi.astype(np.float32),
                                                                      num_bits=bits, narrow_range=narrow).numpy()
    else:
        fq = tf.quantization.fake_quant_with_min_max_vars(w, float(lo), float(hi), num_bits=bits,
                                                          narrow_range=narrow).numpy()
    qmin_tf, qmax_tf = (1 if narrow else 0), 2 ** bits - 1
    scale = (hi - lo) / (qmax_tf - qmin_tf)
    zp_tf = np.clip(np.round(qmin_tf - lo / scale), qmin_tf, qmax_tf)
    nudged_min = (qmin_tf - zp_tf) * scale
    code = np.rint((fq - nudged_min) / scale) + qmin_tf  # TF's integer level of each value
    if quantizer.symmetric:
        q, zp = code - zp_tf, np.zeros_like(zp_tf)
    else:
        q, zp = code - qmin_tf, zp_tf - qmin_tf
    return QuantizedTensor(q=q.T.astype(np.int64), scale=scale if per_axis else np.float64(scale),
                           zero_point=zp.astype(np.int64) if per_axis else np.int64(zp), bits=bits,
                           axis=0 if per_axis else None)


def quantized_weights(model: Any) -> dict[str, QuantizedTensor]:
    """{layer name: integers + scale + zero-point} of every quantized layer, neutral [out, in] layout."""
    if isinstance(model, TFLiteModel):
        return model.quantized_weights()
    out = {}
    if not L.is_graph_model(model):
        return out
    for wrapper in model.layers:
        if not isinstance(wrapper, QuantizeWrapper):
            continue
        if isinstance(wrapper.layer, keras.layers.Dense):
            for weight, quantizer, qvars in wrapper._weight_vars:
                out[wrapper.layer.name] = _qat_tensor(weight, quantizer, qvars)
        elif isinstance(wrapper.quantize_config, MultiHeadAttentionQuantizeConfig):
            for part, (weight, quantizer, qvars) in zip(wrapper.quantize_config._order(), wrapper._weight_vars):
                out[f"{wrapper.layer.name}.{part}"] = _qat_tensor(weight, quantizer, qvars)
    return out


def describe(model: Any) -> list[LayerStats]:
    """Per-layer stats; bits from the quantized tensors where there are some."""
    bits = {n: t.bits for n, t in quantized_weights(model).items()}
    if isinstance(model, TFLiteModel):
        stats = L.describe(model.keras_model, bits)
        weights = model.dequantized_weights([s.name for s in stats])
        for s in stats:
            s.nonzero = int(np.count_nonzero(weights[s.name]))
        return stats
    return L.describe(model, bits)
