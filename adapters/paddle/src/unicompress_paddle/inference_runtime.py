"""Paddle Inference as a deployment runtime (`unicompress.deploy`, name ``paddle-inference``): loads the Paddle
backend's native export (``model.json`` + ``model.pdiparams`` from ``paddle.jit.save``) in Paddle's native
predictor on the CPU. Paddle is imported through `compat`, so a process that imported TensorFlow first gets
`ImportOrderError` instead of a segmentation fault.

Example: ``compare_runtimes(["model.onnx", "native/model.json"], ["onnxruntime", "paddle-inference"])``.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from unicompress.deploy import InputSpec

with warnings.catch_warnings():  # Paddle's import-time notices (e.g. "No ccache found") are not the user's business
    warnings.simplefilter("ignore")
    from .compat import paddle  # (the import-order guard runs first)
    from paddle import inference

_TYPES = {"int64": "tensor(int64)", "int32": "tensor(int32)", "float32": "tensor(float)", "float64": "tensor(double)",
          "bool": "tensor(bool)", "float16": "tensor(float16)"}


def version() -> str:
    """The Paddle version whose predictor runs the program."""
    return paddle.__version__


def _data_ops(node: Any) -> Iterator[dict]:
    """The program's ``data`` ops (its inputs) in the PIR JSON that paddle.jit.save writes."""
    if isinstance(node, dict):
        if str(node.get("#", "")).endswith(".data") and isinstance(node.get("A"), list):
            yield node
        for value in node.values():
            yield from _data_ops(value)
    elif isinstance(node, list):
        for value in node:
            yield from _data_ops(value)


def declared_inputs(program: Path) -> dict[str, InputSpec]:
    """name -> InputSpec read from a PIR ``model.json``; empty for other formats (then inputs are named only)."""
    try:
        tree = json.loads(program.read_text())
    except (UnicodeDecodeError, ValueError):
        return {}
    out = {}
    for op in _data_ops(tree):
        attrs = {a.get("N"): a.get("AT", {}).get("D") for a in op["A"] if isinstance(a, dict)}
        if isinstance(attrs.get("name"), str):
            shape = tuple(None if int(d) < 0 else int(d) for d in attrs.get("shape") or [])
            out[attrs["name"]] = InputSpec(attrs["name"], shape, _TYPES.get(str(attrs.get("dtype")), "tensor(float)"))
    return out


class PaddleInferenceModel:
    """A saved Paddle program in a CPU predictor with `threads` math-library threads."""

    runtime = "paddle-inference"

    def __init__(self, path: Path, threads: int):
        params = path.with_suffix(".pdiparams")
        if not params.is_file():
            raise FileNotFoundError(f"{params} is missing: Paddle Inference needs the program and its parameters "
                                    "(paddle.jit.save writes both)")
        config = inference.Config(str(path), str(params))
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(threads)
        config.disable_glog_info()  # its per-pass INFO lines are not the user's business
        self.predictor = inference.create_predictor(config)
        declared = declared_inputs(path)
        self.inputs = [declared.get(n, InputSpec(n, (None, None), "tensor(int64)" if "ids" in n or "mask" in n
                                                 else "tensor(float)")) for n in self.predictor.get_input_names()]
        self.detail = f"Paddle Inference predictor, CPU, {threads} math thread(s)"

    def get_inputs(self) -> list[InputSpec]:
        return list(self.inputs)

    def output_names(self) -> list[str]:
        return list(self.predictor.get_output_names())

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        for spec in self.inputs:
            arr = np.ascontiguousarray(feeds[spec.name])
            handle = self.predictor.get_input_handle(spec.name)
            handle.reshape(list(arr.shape))
            handle.copy_from_cpu(arr)
        self.predictor.run()
        return [self.predictor.get_output_handle(n).copy_to_cpu() for n in self.predictor.get_output_names()]


def load(path: Path, threads: int = 2) -> PaddleInferenceModel:
    """A ``model.json`` (or ``.pdmodel``) beside its ``.pdiparams``, ready to run."""
    return PaddleInferenceModel(path, threads)
