"""Observers for the calibration methods torchao has none for: a percentile activation observer and a weight
observer that clips by percentile or by the MSE-minimising range (both subclass torchao's min-max observers,
the observer extension point, so dtype, qscheme and quant_min/quant_max stay torchao's)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def _make_observers() -> dict[str, type]:
    """Observer subclasses for the calibration methods torchao has no observer for (built on first use,
    so importing this module does not import torchao)."""
    from torchao.quantization.pt2e.observer import MinMaxObserver, PerChannelMinMaxObserver

    class PercentileObserver(MinMaxObserver):
        """Activation range = the p-th percentile of |x| (symmetric) or the (100-p, p) percentiles of x.

        Keeps a bounded sample of the observed values (every k-th element) and hands the percentile range
        to torchao's `_calculate_qparams`, so dtype, qscheme and quant_min/quant_max stay torchao's.
        """

        def __init__(self, percentile: float = 99.99, max_samples: int = 1 << 20, **kwargs):
            super().__init__(**kwargs)
            self.percentile = float(percentile)
            self.max_samples = int(max_samples)
            self._samples: list[torch.Tensor] = []

        def forward(self, x_orig):
            if x_orig.numel() == 0:
                return x_orig
            flat = x_orig.detach().float().reshape(-1)
            stride = max(1, flat.numel() * 8 // self.max_samples)
            self._samples.append(flat[::stride].clone())
            if sum(t.numel() for t in self._samples) > 2 * self.max_samples:  # bounded memory on long runs
                self._samples = [torch.cat(self._samples)[::2]]
            return super().forward(x_orig)

        @torch.jit.export
        def calculate_qparams(self):
            if not self._samples:
                return super().calculate_qparams()
            x = torch.cat(self._samples).double().numpy()
            lo, hi = _percentile_range(x[None, :], self.percentile, _symmetric(self.qscheme))
            return self._calculate_qparams(torch.tensor(lo[0]), torch.tensor(hi[0]))

    class WeightClipObserver(PerChannelMinMaxObserver):
        """Weight range by percentile or by the MSE-minimising clip, per channel or per tensor.

        percentile: |w| (symmetric) or w clipped at the p-th percentile of each channel; mse: the fraction
        of the min-max range (1.0 down to 0.3 in 1% steps) whose quantize-dequantize round trip, done with
        this observer's own qparams, has the lowest mean squared error. With ``per_tensor`` the whole
        tensor is one channel and the qscheme is the per-tensor one.
        """

        def __init__(self, method: str = "minmax", percentile: float = 99.99, per_tensor: bool = False,
                     **kwargs):
            if per_tensor:
                kwargs["qscheme"] = {torch.per_tensor_symmetric: torch.per_channel_symmetric,
                                     torch.per_tensor_affine: torch.per_channel_affine}[kwargs["qscheme"]]
            super().__init__(**kwargs)
            self.method, self.percentile, self.per_tensor = method, float(percentile), bool(per_tensor)
            if per_tensor:  # report the per-tensor scheme to prepare/convert
                self.qscheme = {torch.per_channel_symmetric: torch.per_tensor_symmetric,
                                torch.per_channel_affine: torch.per_tensor_affine}[self.qscheme]
            self._weight: Optional[torch.Tensor] = None

        def forward(self, x_orig):
            self._weight = x_orig.detach().clone()
            return x_orig

        def _rows(self) -> torch.Tensor:
            w = self._weight.double()
            if self.per_tensor:
                return w.reshape(1, -1)
            return w.transpose(0, self.ch_axis).reshape(w.shape[self.ch_axis], -1)

        def _qparams(self, lo: torch.Tensor, hi: torch.Tensor):
            scheme = self.qscheme
            if self.per_tensor:  # torchao's per-tensor branch wants 0-d min/max
                return self._calculate_qparams(lo.reshape(()).float(), hi.reshape(()).float())
            return self._calculate_qparams(lo.float(), hi.float())

        @torch.jit.export
        def calculate_qparams(self):
            if self._weight is None:
                raise RuntimeError("the weight observer saw no weight")
            rows = self._rows()
            if self.method == "percentile":
                lo, hi = _percentile_range(rows.numpy(), self.percentile, _symmetric(self.qscheme))
                return self._qparams(torch.from_numpy(lo), torch.from_numpy(hi))
            lo0, hi0 = rows.min(dim=1).values, rows.max(dim=1).values
            if self.method != "mse":
                return self._qparams(lo0, hi0)
            best_err = torch.full_like(lo0, float("inf"))
            best_lo, best_hi = lo0.clone(), hi0.clone()
            for frac in np.linspace(1.0, 0.3, 71):
                lo, hi = lo0 * frac, hi0 * frac
                scale, zp = self._qparams(lo, hi)
                s, z = scale.double().reshape(-1, 1), zp.double().reshape(-1, 1)
                q = torch.clamp(torch.round(rows / s) + z, self.quant_min, self.quant_max)
                err = (((q - z) * s - rows) ** 2).mean(dim=1)
                better = err < best_err - 1e-15
                best_err = torch.where(better, err, best_err)
                best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
            return self._qparams(best_lo, best_hi)

    return {"percentile": PercentileObserver, "weight_clip": WeightClipObserver}


def _symmetric(qscheme) -> bool:
    return qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)


def _percentile_range(rows: np.ndarray, percentile: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (lo, hi): +-percentile(|x|) when symmetric, else the (100-p, p) percentiles."""
    if symmetric:
        amax = np.percentile(np.abs(rows), percentile, axis=1)
        return -amax, amax
    return np.percentile(rows, 100 - percentile, axis=1), np.percentile(rows, percentile, axis=1)


_OBSERVERS: dict[str, type] = {}


def observer_class(kind: str) -> type:
    """The observer subclass ``"percentile"`` (activations) or ``"weight_clip"`` (weights)."""
    if not _OBSERVERS:
        _OBSERVERS.update(_make_observers())
    return _OBSERVERS[kind]

