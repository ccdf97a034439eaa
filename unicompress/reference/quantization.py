"""What each quantization spec means, in numpy: ranges, scales, zero-points, integers.

Linear mapping: r = S (q - Z). Symmetric: Z = 0, q in [-(2^(b-1)-1), 2^(b-1)-1] with
narrow_range (S = amax / (2^(b-1)-1)), else q in [-2^(b-1), 2^(b-1)-1] (S = amax / ((2^b - 1) / 2)).
Asymmetric: q in [0, 2^b - 1], the range always contains 0, S = (max - min) / (2^b - 1),
Z = round(-min / S). Rounding is half-to-even (np.rint), as in torch and ONNX.

Log mapping (sign-magnitude): |r| = S * base^-(q - Z) with Z = 0, S = amax of the channel,
q in [0, 2^(b-1) - 1]; the sign is kept apart and values below the smallest level (by more
than half a log step) become exact zeros.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

EPS = float(np.finfo(np.float32).eps)


def qrange(bits: int, symmetric: bool, narrow_range: bool = True) -> tuple[int, int]:
    """(qmin, qmax) of the integer grid.

    Example: ``qrange(8, True)`` is (-127, 127); ``qrange(8, False)`` is (0, 255).
    """
    if symmetric:
        top = 2 ** (bits - 1) - 1
        return (-top if narrow_range else -top - 1), top
    return 0, 2 ** bits - 1


def _reduce_axes(x: np.ndarray, axis: Optional[int]) -> tuple[int, ...]:
    return tuple(i for i in range(x.ndim) if i != (axis % x.ndim)) if axis is not None else tuple(range(x.ndim))


def value_range(x: np.ndarray, axis: Optional[int] = None, method: str = "minmax",
                percentile: float = 99.99, symmetric: bool = True, bits: int = 8,
                narrow_range: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the range to quantize, per channel when `axis` is given.

    minmax: the observed min and max; percentile: |x| (or x) clipped at the given percentile;
    mse: the clipping fraction (of the min-max range, in 1% steps down to 30%) whose
    quantize-dequantize round trip has the lowest mean squared error.
    """
    x = np.asarray(x, dtype=np.float64)
    red = _reduce_axes(x, axis)
    if method == "minmax":
        return x.min(axis=red), x.max(axis=red)
    if method == "percentile":
        moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1) if axis is not None else x.reshape(1, -1)
        if symmetric:
            amax = np.percentile(np.abs(moved), percentile, axis=1)
            lo, hi = -amax, amax
        else:
            lo = np.percentile(moved, 100 - percentile, axis=1)
            hi = np.percentile(moved, percentile, axis=1)
        return (lo, hi) if axis is not None else (lo[0], hi[0])
    if method == "mse":
        lo0, hi0 = x.min(axis=red), x.max(axis=red)
        best_err = np.full(np.shape(lo0), np.inf)
        best_lo, best_hi = np.array(lo0, dtype=np.float64), np.array(hi0, dtype=np.float64)
        for frac in np.linspace(1.0, 0.3, 71):
            lo, hi = lo0 * frac, hi0 * frac
            scale, zp = qparams_from_range(lo, hi, bits, symmetric, narrow_range)
            qmin, qmax = qrange(bits, symmetric, narrow_range)
            deq = dequantize(quantize(x, scale, zp, qmin, qmax, axis), scale, zp, axis)
            err = ((deq - x) ** 2).mean(axis=red)
            better = err < best_err - 1e-15
            best_err = np.where(better, err, best_err)
            best_lo, best_hi = np.where(better, lo, best_lo), np.where(better, hi, best_hi)
        return best_lo, best_hi
    raise ValueError(f"calibration method must be minmax, percentile or mse, got {method!r}")


def qparams_from_range(lo, hi, bits: int, symmetric: bool, narrow_range: bool = True
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point) that map [lo, hi] onto the integer grid."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    qmin, qmax = qrange(bits, symmetric, narrow_range)
    if symmetric:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        scale = np.maximum(amax / ((qmax - qmin) / 2), EPS)
        return scale, np.zeros_like(scale, dtype=np.int64)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = np.maximum((hi - lo) / (qmax - qmin), EPS)
    zp = np.clip(qmin - np.rint(lo / scale), qmin, qmax).astype(np.int64)
    return scale, zp


def linear_qparams(x: np.ndarray, bits: int = 8, symmetric: bool = True, axis: Optional[int] = None,
                   narrow_range: bool = True, method: str = "minmax", percentile: float = 99.99
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point) for `x`, per channel along `axis` or per tensor.

    Example: ``linear_qparams(np.array([-1.27, 0.5]), 8)`` gives scale 0.01, zero-point 0.
    """
    lo, hi = value_range(x, axis, method, percentile, symmetric, bits, narrow_range)
    return qparams_from_range(lo, hi, bits, symmetric, narrow_range)


def _bcast(p: np.ndarray, x: np.ndarray, axis: Optional[int]) -> np.ndarray:
    p = np.asarray(p)
    if axis is None or p.ndim == 0:
        return p
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return p.reshape(shape)


def quantize(x: np.ndarray, scale, zero_point, qmin: int, qmax: int, axis: Optional[int] = None) -> np.ndarray:
    """q = clip(rint(x / S) + Z, qmin, qmax) as int64."""
    s, z = _bcast(scale, x, axis), _bcast(zero_point, x, axis)
    return np.clip(np.rint(np.asarray(x, np.float64) / s) + z, qmin, qmax).astype(np.int64)


def dequantize(q: np.ndarray, scale, zero_point, axis: Optional[int] = None) -> np.ndarray:
    """r = S (q - Z)."""
    return (_bcast(scale, q, axis) * (np.asarray(q, np.float64) - _bcast(zero_point, q, axis)))


@dataclass(frozen=True)
class LinearQuantized:
    """Reference result of linear quantization of one tensor."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    axis: Optional[int]

    def dequantize(self) -> np.ndarray:
        return dequantize(self.q, self.scale, self.zero_point, self.axis)


def quantize_weight(w: np.ndarray, bits: int = 8, symmetric: bool = True, per_channel: bool = True,
                    narrow_range: bool = True, method: str = "minmax", percentile: float = 99.99
                    ) -> LinearQuantized:
    """Quantize a [out, in] weight as the spec means it (per channel = per output row)."""
    axis = 0 if per_channel else None
    scale, zp = linear_qparams(w, bits, symmetric, axis, narrow_range, method, percentile)
    qmin, qmax = qrange(bits, symmetric, narrow_range)
    return LinearQuantized(quantize(w, scale, zp, qmin, qmax, axis), scale, zp, qmin, qmax, axis)


@dataclass(frozen=True)
class LogQuantized:
    """Reference result of log quantization: codes, signs (0 = exact zero) and per-channel scale."""

    q: np.ndarray
    sign: np.ndarray
    scale: np.ndarray
    base: float
    axis: Optional[int]

    def dequantize(self) -> np.ndarray:
        return log_dequantize(self.q, self.sign, self.scale, self.base, self.axis)


def log_quantize(w: np.ndarray, bits: int = 4, base: float = 2.0, per_channel: bool = True) -> LogQuantized:
    """Logarithmic quantization: |w| ~= S * base^-q, q in [0, 2^(b-1)-1], S = amax per channel."""
    axis = 0 if per_channel else None
    x = np.asarray(w, np.float64)
    scale = np.maximum(np.abs(x).max(axis=_reduce_axes(x, axis)), EPS)
    s = _bcast(scale, x, axis)
    qmax = 2 ** (bits - 1) - 1
    with np.errstate(divide="ignore"):
        k = -np.log(np.abs(x) / s) / np.log(base)
    q = np.rint(k)
    underflow = ~np.isfinite(k) | (k > qmax + 0.5)
    q = np.clip(np.where(underflow, qmax, q), 0, qmax).astype(np.int64)
    sign = np.where(underflow, 0, np.sign(x)).astype(np.int8)
    return LogQuantized(q, sign, scale, base, axis)


def log_dequantize(q: np.ndarray, sign: np.ndarray, scale, base: float, axis: Optional[int] = None) -> np.ndarray:
    """r = sign * S * base^-q."""
    return sign * _bcast(scale, q, axis) * np.power(base, -np.asarray(q, np.float64))


def dequantize_tensor(t) -> np.ndarray:
    """Dequantize a backend's QuantizedTensor (see unicompress.backend.types)."""
    if t.mapping == "log":
        zp = np.asarray(t.zero_point)
        shift = zp.reshape([-1] + [1] * (np.ndim(t.q) - 1)) if zp.ndim and t.axis is not None else zp
        return log_dequantize(np.asarray(t.q) - shift, t.sign, t.scale, t.base, t.axis)
    return dequantize(t.q, t.scale, t.zero_point, t.axis)


def levels_per_channel(q: np.ndarray, axis: Optional[int] = 0) -> np.ndarray:
    """Number of distinct integer values per channel (or for the whole tensor)."""
    if axis is None:
        return np.array([len(np.unique(q))])
    moved = np.moveaxis(np.asarray(q), axis, 0).reshape(q.shape[axis], -1)
    return np.array([len(np.unique(row)) for row in moved])
