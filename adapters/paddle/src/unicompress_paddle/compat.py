"""Import guard for Paddle, and the workarounds for PaddleSlim 2.6.0 entry points broken on Paddle 3.

Every framework module of this adapter imports Paddle through this module, so the import-order
check runs before Paddle's core library is loaded: TensorFlow first, then Paddle, in one process is a
segmentation fault (STACK.md) that would take the user's process down with no Python error.
"""
from __future__ import annotations

import sys
import warnings

from unicompress.errors import ImportOrderError

IMPORT_ORDER_MESSAGE = (
    "TensorFlow was imported before Paddle in this process; loading Paddle now would crash the whole "
    "process (a segmentation fault while Paddle loads its core library, paddle/base/core.py). "
    "Fix: import paddle before tensorflow (e.g. put `import paddle` first in your script or notebook), "
    "or run the Paddle backend in a separate process from the TensorFlow one.")


def check_import_order() -> None:
    """Raise ImportOrderError when importing Paddle now would segfault (TensorFlow loaded first).

    Example: ``check_import_order()`` is a no-op in a process that has not imported TensorFlow,
    or that imported Paddle before it.
    """
    if "tensorflow" in sys.modules and "paddle" not in sys.modules:
        raise ImportOrderError(IMPORT_ORDER_MESSAGE)


check_import_order()

import paddle  # noqa: E402  (after the guard on purpose)

__all__ = ["paddle", "check_import_order", "IMPORT_ORDER_MESSAGE", "paddleslim"]


def paddleslim():
    """Import PaddleSlim 2.6.0 quietly (it warns about pkg_resources and distutils on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import paddleslim as slim
    return slim


# ---- Paddle 3 / PaddleSlim 2.6 workarounds ---------------------------------------------------------
def pir_safe_qdq(model) -> int:
    """Make converted quant/dequant layers save correctly with paddle.jit under PIR (Paddle 3's default IR).

    Two breakages of the PIR branch of `paddle.nn.quant.format.LinearQuanter/LinearDequanter.forward`:
    1. ``paddle.jit.save(PTQ/QAT(...).convert(model), path, input_spec=[InputSpec([None, ...])])`` raises
       ``ValueError: (InvalidArgument) Each value of attribute 'shape' is expected to be no less than 0 ...
       shape = [-1, -1, 32]``: it creates a persistable placeholder of the input's dynamic shape.
    2. With a static input shape it saves, but the saved PIR program's `dequantize_linear` does not compute
       q * amax / qmax (PIR maps it onto the quantize kernel; see Paddle2ONNX PR #1528): the loaded tiny-bert
       gave logits off by 3.5e-2 (logits ~5e-2; the 8-bit error is ~1e-5), a single Linear by ~1e3.
    We swap each instance's class for a subclass whose PIR branch computes the same arithmetic with plain
    ops (q = clip(round(x / amax * qmax)), x = q * amax / qmax, per channel along `quant_axis`); the dygraph
    branch (Paddle's kernels) is unchanged. Returns the number of layers patched.
    """
    from paddle.nn.quant.format import LinearDequanter, LinearQuanter

    count = 0
    for layer in model.sublayers(include_self=True):
        if type(layer) is LinearQuanter:
            layer.__class__ = _PirSafeLinearQuanter
            count += 1
        elif type(layer) is LinearDequanter:
            layer.__class__ = _PirSafeLinearDequanter
            count += 1
    return count


def _pir_scale(layer, x):
    s = layer._scales
    if layer._quant_axis is not None and layer._quant_axis >= 0 and s.shape and s.shape[0] > 1:
        shape = [1] * len(x.shape)
        shape[layer._quant_axis] = -1
        s = paddle.reshape(s, shape)
    return s


def _make_pir_safe():
    from paddle.base.framework import in_pir_mode
    from paddle.nn.quant.format import LinearDequanter, LinearQuanter

    class PirSafeLinearQuanter(LinearQuanter):
        def forward(self, input):
            if in_pir_mode():
                q = paddle.round(input / _pir_scale(self, input) * float(self._qmax))
                return paddle.clip(q, float(self._qmin), float(self._qmax))
            return super().forward(input)

    class PirSafeLinearDequanter(LinearDequanter):
        def forward(self, input):
            if in_pir_mode():
                return input * _pir_scale(self, input) / float(self._qmax)
            return super().forward(input)

    return PirSafeLinearQuanter, PirSafeLinearDequanter


_PirSafeLinearQuanter, _PirSafeLinearDequanter = _make_pir_safe()


def fixed_unstructured_pruner_class(gmp: bool = False):
    """PaddleSlim's UnstructuredPruner (or, with `gmp`, GMPUnstructuredPruner) with its breakages fixed.

    Broken call: ``UnstructuredPruner(model, "ratio", ratio=0.5).step()`` then ``model(x)`` (or
    ``update_params()``) raises ``TypeError: (InvalidType) Type promotion only support calculations between
    floating-point numbers ... x: float32, y: bool``. Cause (paddleslim/dygraph/prune/unstructured_pruner.py,
    `_update_masks` and `set_static_masks`): ``paddle.assign(bool_ndarray, output=mask)`` turns the float32
    mask buffer into a *bool* tensor on Paddle 3, and the forward pre-hook computes ``param * mask``,
    which Paddle 3's type promotion rejects (Paddle 2.6 cast silently). Fix: write float32 masks (with
    `set_value`: `paddle.assign(ndarray)` converts through `ndarray.tolist()`, 0.75 s for MiniLM's masks).

    Block scores: PaddleSlim ranks a sparse_block by |mean(w)| (opposite signs cancel, so a block of large
    weights can score 0); we rank it by mean |w| (its L1 norm / size), the block norm the spec means.
    Also fixed: in 'ratio' mode the threshold is the k-th smallest |w| (k = round(ratio * n)) but the mask
    keeps ``|w| >= threshold``, so one weight fewer than k is pruned per group; we keep ``|w| > threshold``
    (exactly k pruned, as the spec means) and keep everything when k == 0.
    """
    import numpy as np

    from .layers import host_view  # here, not at the top: layers imports this module

    paddleslim()
    from paddleslim import GMPUnstructuredPruner, UnstructuredPruner
    from paddleslim.prune.unstructured_pruner_utils import cal_mxn_avg_matrix

    class FixedUnstructuredPruner(GMPUnstructuredPruner if gmp else UnstructuredPruner):
        def _pruned_params(self):
            for _, sub_layer in self.model.named_sublayers():
                if not self._should_prune_layer(sub_layer):
                    continue
                for param in sub_layer.parameters(include_sublayers=False):
                    if param.name not in self.skip_params:
                        yield param

        block_norm = "l1"

        def _score(self, param):
            # mean |w| (L1 / size) or mean w^2 (L2^2 / size) of each block; PaddleSlim takes |mean(w)|,
            # where opposite signs cancel
            w = host_view(param)  # read only: np.abs / ** 2 make the new array
            w = np.abs(w) if self.block_norm == "l1" else w.astype(np.float64) ** 2
            if list(self.sparse_block) == [1, 1]:  # PaddleSlim's helper would deep-copy the scores
                return w
            return cal_mxn_avg_matrix(w, m=self.sparse_block[0], n=self.sparse_block[1])

        def update_threshold(self):
            scores = [(p.name, self._score(p).ravel()) for p in self._pruned_params()]

            def kth(v):  # the k-th smallest score; np.partition finds it in linear time (np.sort: n log n)
                k = max(0, round(self.ratio * v.size) - 1)
                return np.partition(v, k)[k].item()

            if self.local_sparsity:
                self.thresholds.update({name: kth(v) for name, v in scores})
            elif scores:
                self.threshold = kth(np.concatenate([v for _, v in scores]))

        def _update_masks(self):
            params = list(self._pruned_params())
            total = sum(int(np.prod(p.shape)) for p in params)
            for param in params:
                mask = self.masks.get(param.name)
                avg = self._score(param)
                if self.mode == "ratio":
                    n = avg.size if self.local_sparsity else total
                    thr = self.thresholds[param.name] if self.local_sparsity else self.threshold
                    keep = np.ones_like(avg, bool) if round(self.ratio * n) == 0 else avg > thr
                else:
                    keep = avg >= self.threshold
                # set_value copies the array; paddle.assign(ndarray) goes through ndarray.tolist()
                # (0.75 of the 0.9 s this took on MiniLM's 36 Linears)
                mask.set_value(keep.astype(np.float32))

        def set_static_masks(self):
            for param in self._pruned_params():
                self.masks.get(param.name).set_value((host_view(param) != 0).astype(np.float32))

        def detach(self) -> None:
            """Write the masked values into the weights, then remove the pruner's hooks and mask buffers
            (PaddleSlim keeps no hook handles), so the model saves and exports without them."""
            self.update_params()
            ours = {name.replace(".", "_") + "_mask" for name in self.masks}  # the names _apply_masks used
            for _, sub_layer in self.model.named_sublayers(include_self=True):
                hooks = sub_layer._forward_pre_hooks
                for key in [k for k, h in hooks.items() if getattr(h, "__self__", None) is self]:
                    del hooks[key]
                for name in [b for b in sub_layer._buffers if b in ours]:
                    del sub_layer._buffers[name]

    return FixedUnstructuredPruner


def fixed_fpgm_pruner_class():
    """FPGMFilterPruner whose `get_distance_sum` does not call `np.product` (removed in NumPy 2)."""
    import numpy as np

    paddleslim()
    from paddleslim.dygraph import FPGMFilterPruner

    class FixedFPGMFilterPruner(FPGMFilterPruner):
        def get_distance_sum(self, value, out_idx):
            w = value.reshape(value.shape[0], int(np.prod(value.shape[1:])))
            return np.sqrt(((w - w[out_idx]) ** 2).sum(-1)).sum()

    return FixedFPGMFilterPruner


class ScoringCollection:
    """The minimal PruningCollection PaddleSlim's `FilterPruner.cal_mask` reads (master name/axis, values).

    PaddleSlim's filter pruners build their collections by tracing the model into a static program
    (`paddleslim.core.dygraph.dygraph2program`), which fails on Paddle 3 with ``AttributeError: module
    'paddle.base.dygraph.base' has no attribute '_to_static_mode_guard_'``. For a Transformer the groups
    are known from the declared TransformerStructure, so we hand `cal_mask` this collection directly.
    """

    def __init__(self, name: str, value, axis: int = 0):
        self.master_name, self.master_axis, self.values = name, axis, {name: value}

    def all_pruning_details(self):
        return []


class PlanOp:
    """Stands in for the traced op PaddleSlim's PruningMask carries (only `attr('groups')` is read)."""

    def attr(self, name):
        return None


def filter_scorer(norm: str):
    """An L1/L2NormFilterPruner instance usable for `cal_mask` without its (broken) graph tracing."""
    slim = paddleslim()
    cls = slim.dygraph.L1NormFilterPruner if norm == "l1" else slim.dygraph.L2NormFilterPruner
    return cls.__new__(cls)


def apply_plan(model, masks: dict, remove: bool) -> None:
    """Apply {param: (axis, keep-vector)} with PaddleSlim's PruningPlan: slice the parameters (remove=True,
    `imperative_apply`) or zero them (`lazy_apply`); then drop the backup buffers the plan registers."""
    import contextlib
    import io

    import numpy as np
    from paddleslim.dygraph.prune.pruning_plan import PruningMask, PruningPlan

    if not masks:
        return
    plan = PruningPlan(model.full_name())
    for param, (axis, keep) in masks.items():
        plan.add(param.name, PruningMask(int(axis), np.asarray(keep, np.int64), float(1 - np.mean(keep)), PlanOp()))
    with contextlib.redirect_stdout(io.StringIO()):  # lazy_apply prints a debug line per parameter
        plan.apply(model, lazy=not remove)
    ours = {p.name.replace(".", "_") + "_backup" for p in masks}  # the names imperative_apply uses
    for layer in model.sublayers(include_self=True):
        for name in [b for b in layer._buffers if b in ours]:
            del layer._buffers[name]


def fixed_hist_observer(quant_bits: int = 8, percent: float = 0.999):
    """PaddleSlim's percentile HistObserver, fixed for NumPy 2.

    Broken call: calibrating with ``paddleslim.quant.observers.HistObserver`` then ``PTQ.convert`` raises
    ``TypeError: only 0-dimensional arrays can be converted to Python scalars`` in
    `PercentHistObserverLayer._cal_min_max_by_percent` (``float((max_idx - 0.5) * bin_width)`` on a
    1-element array, an error since NumPy 2). Fix: the same formula on the scalar index.
    """
    import numpy as np
    slim = paddleslim()
    from paddleslim.quant.observers.hist import HistObserver, PercentHistObserverLayer

    class FixedPercentHistObserverLayer(PercentHistObserverLayer):
        def _cal_min_max_by_percent(self):
            hist = self._hist / np.sum(self._hist, dtype=np.float64)
            cum = np.cumsum(hist)
            max_idx = int(np.argwhere(cum >= self._percent)[0][0])
            min_idx = int(np.argwhere(cum >= (1 - self._percent))[0][0])
            width = (self._hist_max - self._hist_min) / hist.shape[0]
            return self._hist_min + (min_idx - 0.5) * width, self._hist_min + (max_idx - 0.5) * width

    class FixedHistObserver(HistObserver):
        def _get_class(self):
            return FixedPercentHistObserverLayer

    del slim
    return FixedHistObserver(quant_bits=quant_bits, percent=percent)


def fixed_mse_observer(quant_bits: int = 8):
    """PaddleSlim's MSEObserver with its search reset per calibration batch.

    Broken behaviour: `MSEObserverLayer.cal_min_max` keeps `calibration_loss` across batches but starts each
    batch's search from that batch's abs-max, so after the first batch a candidate is accepted only if it
    beats the best loss of *earlier* batches: later batches silently fall back to plain abs-max (measured
    on tiny-bert: the 'mse' range equalled the min-max range). Fix: run PaddleSlim's search afresh on every
    batch and keep the largest chosen range over the batches.
    """
    paddleslim()
    from paddleslim.quant.observers.mse import MSEObserver, MSEObserverLayer

    class FixedMSEObserverLayer(MSEObserverLayer):
        def forward(self, inputs):
            previous = getattr(self, "_running_max", None)
            self.calibration_loss = float("inf")
            out = super().forward(inputs)
            self._running_max = self._mse_max if previous is None else max(previous, self._mse_max)
            self._mse_max = self._running_max
            return out

    class FixedMSEObserver(MSEObserver):
        def _get_class(self):
            return FixedMSEObserverLayer

    return FixedMSEObserver(quant_bits=quant_bits)


def with_zero_points(factory):
    """A QAT quanter factory whose layers report a zero zero-point, so `QAT.convert` works.

    Broken call: ``QAT(QuantConfig(weight=FakeQuanterWithAbsMaxObserver(), ...)).convert(model)`` (also with
    PaddleSlim's FakeQuanterChannelWiseAbsMaxObserver) raises ``TypeError: Can't constructs a 'paddle.Tensor'
    with data type <class 'NoneType'>``: the quanters' `zero_points()` return None and
    `LinearQuanter.__init__` calls ``paddle.to_tensor(None)``. Both quanters are symmetric, so the zero-point
    is 0: we return zeros of the scale's shape.
    """
    base = factory._get_class()

    class ZeroPointQuanterLayer(base):
        def zero_points(self):
            scales = self.scales()
            return None if scales is None else paddle.zeros_like(scales)

    ZeroPointQuanterLayer.__name__ = base.__name__
    factory._get_class = lambda: ZeroPointQuanterLayer
    return factory
