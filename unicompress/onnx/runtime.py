"""Run an ONNX file in ONNX Runtime with a fixed thread count and compare it with a framework's outputs.

Example::

    from unicompress.onnx import run_onnx, compare_outputs
    logits = run_onnx("model.onnx", {"input_ids": ids, "attention_mask": mask})
    compare_outputs(logits, adapter.run(model, inputs), atol=1e-4).ok
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

_NP_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
             "tensor(double)": np.float64, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}


def make_session(path: Union[str, Path], threads: int = 1, spinning: bool = True):
    """An ORT CPU session with `threads` intra-op threads and one inter-op thread (reproducible timings).

    ``spinning=False`` stops the intra-op threads from busy-waiting after each run (ORT's
    ``session.intra_op.allow_spinning``): with several sessions open, one session's spinning threads
    would otherwise take CPU from the next one's run.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def feeds_for(session: Any, inputs: Union[np.ndarray, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The inputs the graph declares, cast to its declared types (extra inputs are dropped)."""
    declared = session.get_inputs()
    if not isinstance(inputs, Mapping):
        return {declared[0].name: np.asarray(inputs)}
    feeds = {}
    for spec in declared:
        if spec.name not in inputs:
            raise KeyError(f"the ONNX graph needs input {spec.name!r}; given: {sorted(inputs)}")
        arr = np.asarray(inputs[spec.name])
        feeds[spec.name] = arr.astype(_NP_TYPES.get(spec.type, arr.dtype), copy=False)
    return feeds


def run_onnx(model: Union[str, Path, Any], inputs: Union[np.ndarray, Mapping[str, np.ndarray]],
             threads: int = 1, output: Union[int, str] = 0) -> np.ndarray:
    """The chosen output (index or name; default the first, e.g. ``logits``) of one ORT run."""
    session = make_session(model, threads) if isinstance(model, (str, Path)) else model
    names = [o.name for o in session.get_outputs()]
    wanted = output if isinstance(output, str) else names[output]
    return np.asarray(session.run([wanted], feeds_for(session, inputs))[0])


@dataclass(frozen=True)
class OutputComparison:
    """How far two outputs are apart."""

    max_abs: float
    rel_l2: float
    argmax_agreement: float
    ok: bool
    atol: float
    rtol: float

    def __str__(self) -> str:
        return (f"max |diff| {self.max_abs:.3g}, relative L2 {self.rel_l2:.3g}, argmax agreement "
                f"{self.argmax_agreement:.0%} (atol {self.atol:g}, rtol {self.rtol:g})")


def compare_outputs(actual: np.ndarray, expected: np.ndarray, atol: float = 1e-4, rtol: float = 1e-3
                    ) -> OutputComparison:
    """Elementwise |a - e| <= atol + rtol |e| everywhere (numpy.allclose semantics), plus summary numbers."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != e.shape:
        return OutputComparison(float("inf"), float("inf"), 0.0, False, atol, rtol)
    diff = np.abs(a - e)
    rel = float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-12))
    agree = float((a.argmax(-1) == e.argmax(-1)).mean()) if a.ndim >= 1 and a.size else 1.0
    ok = bool(np.all(np.isfinite(a)) and np.all(diff <= atol + rtol * np.abs(e)))
    return OutputComparison(float(diff.max()) if diff.size else 0.0, rel, agree, ok, atol, rtol)
