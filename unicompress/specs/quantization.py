"""QuantizationSpec: how weights (and activations) become low-bit integers."""
from __future__ import annotations

from enum import Enum
from typing import Any, Iterator, Literal, Optional

from pydantic import Field, model_validator

from .base import SPEC_VERSION, SpecModel
from .selector import LayerSelector
from .training import TrainingSpec


class QuantMode(str, Enum):
    dynamic = "dynamic"  # int weights, activations quantized on the fly (no calibration)
    static = "static"  # int weights and activations, ranges from calibration data
    qat = "qat"  # fake-quant during fine-tuning, then convert
    weight_only = "weight_only"  # int weights, float activations


class Scheme(str, Enum):
    symmetric = "symmetric"  # Z = 0, range [-(2^(b-1)-1), 2^(b-1)-1] (narrow) or [-2^(b-1), 2^(b-1)-1]
    asymmetric = "asymmetric"  # r = S (q - Z), q in [0, 2^b - 1]


class Mapping(str, Enum):
    linear = "linear"  # r = S (q - Z)
    log = "log"  # |r| = S * base^-(q - Z), sign kept apart (logarithmic quantization)


class QuantGranularity(str, Enum):
    per_tensor = "per_tensor"
    per_channel = "per_channel"  # one scale per output channel (row of the [out, in] weight)


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    percentile = "percentile"  # clip to the p-th percentile of |x|
    mse = "mse"  # the clipping range that minimises quantization MSE


class CalibrationSpec(SpecModel):
    """How activation (and, for weights, clipping) ranges are estimated."""

    method: CalibrationMethod = CalibrationMethod.minmax
    percentile: float = Field(99.99, gt=50, le=100)
    num_batches: int = Field(8, ge=1, le=100_000)


class LayerOverride(SpecModel):
    """Per-layer settings for mixed precision. Layers matched by `pattern` (a name glob) use these."""

    pattern: str = Field(..., min_length=1)
    bits: Optional[int] = Field(None, ge=2, le=16)
    granularity: Optional[QuantGranularity] = None
    scheme: Optional[Scheme] = None
    skip: bool = Field(False, description="keep these layers in float")


class QuantizationSpec(SpecModel):
    """Quantize the selected layers.

    Example (YAML)::

        technique: quantization
        mode: static
        bits: 8
        granularity: per_channel
        calibration: {method: percentile, percentile: 99.9}
    """

    technique: Literal["quantization"] = "quantization"
    version: Literal["1"] = SPEC_VERSION
    mode: QuantMode = QuantMode.static
    bits: int = Field(8, ge=2, le=16, description="weight bits")
    activation_bits: int = Field(8, ge=2, le=16, description="activation bits (static, qat, dynamic)")
    scheme: Scheme = Scheme.symmetric
    activation_scheme: Scheme = Scheme.asymmetric
    narrow_range: bool = Field(True, description="symmetric: use [-(2^(b-1)-1), 2^(b-1)-1] so 0 is centred")
    mapping: Mapping = Mapping.linear
    log_base: float = Field(2.0, gt=1, le=16, description="log mapping: the base of the levels")
    granularity: QuantGranularity = QuantGranularity.per_channel
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    overrides: list[LayerOverride] = Field(default_factory=list)
    selector: LayerSelector = Field(default_factory=LayerSelector)
    training: Optional[TrainingSpec] = Field(None, description="qat: how long to fine-tune")

    @model_validator(mode="after")
    def _consistent(self) -> "QuantizationSpec":
        if self.mode is QuantMode.qat and self.training is None:
            raise ValueError("mode 'qat' fine-tunes the model: give training: {steps: ..., learning_rate: ...}")
        if self.mode is not QuantMode.qat and self.training is not None:
            raise ValueError(f"training applies only to mode 'qat', not {self.mode.value!r}")
        if self.mapping is Mapping.log and self.scheme is Scheme.asymmetric:
            raise ValueError("mapping 'log' is sign-magnitude: use scheme 'symmetric'")
        if self.mapping is Mapping.log and self.mode in (QuantMode.static, QuantMode.dynamic):
            raise ValueError("mapping 'log' quantizes weights only: use mode 'weight_only' or 'qat'")
        seen = set()
        for o in self.overrides:
            if o.pattern in seen:
                raise ValueError(f"override pattern {o.pattern!r} appears twice")
            seen.add(o.pattern)
        return self

    def capability_items(self) -> Iterator[tuple[str, Any]]:
        yield "mode", self.mode.value
        yield "bits", self.bits
        if self.mode in (QuantMode.static, QuantMode.qat, QuantMode.dynamic):
            yield "activation_bits", self.activation_bits
        yield "scheme", self.scheme.value
        yield "mapping", self.mapping.value
        yield "granularity", self.granularity.value
        if self.mode is QuantMode.static:
            yield "calibration.method", self.calibration.method.value
        for o in self.overrides:
            if o.bits is not None:
                yield "bits", o.bits
            if o.granularity is not None:
                yield "granularity", o.granularity.value
            if o.scheme is not None:
                yield "scheme", o.scheme.value
        if self.overrides:
            yield "overrides", True
