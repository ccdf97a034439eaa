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
    """Make converted quant/dequant layers traceable by paddle.jit under PIR (Paddle 3's default IR).

    Broken call: ``paddle.jit.save(QAT/PTQ(...).convert(model), path, input_spec=[InputSpec([None, ...])])``
    raises ``ValueError: (InvalidArgument) Each value of attribute 'shape' is expected to be no less than
    0 ... shape = [-1, -1, 32]``: the PIR branch of `LinearQuanter.forward`/`LinearDequanter.forward`
    creates a persistable placeholder of the input's (dynamic) shape that it then throws away. We swap
    each instance's class for a subclass whose PIR branch calls the same `quantize_linear` /
    `dequantize_linear` kernels without the placeholder; dygraph behaviour is unchanged.
    Returns the number of layers patched.
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


def _pir_qdq(layer, op, input):
    from paddle import _C_ops
    out, _, _, _ = getattr(_C_ops, op)(input, layer._scales, layer._zero_point, layer.in_accum, layer.in_state,
                                       layer._quant_axis, layer._bit_length, layer._qmin, layer._qmax, 0, True, False)
    return out


def _make_pir_safe():
    from paddle.base.framework import in_pir_mode
    from paddle.nn.quant.format import LinearDequanter, LinearQuanter

    class PirSafeLinearQuanter(LinearQuanter):
        def forward(self, input):
            if in_pir_mode():
                return _pir_qdq(self, "quantize_linear", input)
            return super().forward(input)

    class PirSafeLinearDequanter(LinearDequanter):
        def forward(self, input):
            if in_pir_mode():
                return _pir_qdq(self, "dequantize_linear", input)
            return super().forward(input)

    return PirSafeLinearQuanter, PirSafeLinearDequanter


_PirSafeLinearQuanter, _PirSafeLinearDequanter = _make_pir_safe()
