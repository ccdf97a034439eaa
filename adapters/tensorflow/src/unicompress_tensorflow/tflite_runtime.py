"""The TFLite interpreter as a deployment runtime (`unicompress.deploy`, name ``tflite``): loads the
TensorFlow backend's native export (``model.tflite``) and runs it through its serving signature, so inputs
and outputs carry the Keras model's names (``input_ids``, ``logits``) rather than TFLite tensor names.

Example: ``compare_runtimes(["model.onnx", "model.tflite"], ["onnxruntime", "tflite"])``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

from . import ensure_legacy_keras

ensure_legacy_keras()

import tensorflow as tf  # noqa: E402
from unicompress.deploy import InputSpec  # noqa: E402

_TYPES = {np.dtype(np.int64): "tensor(int64)", np.dtype(np.int32): "tensor(int32)",
          np.dtype(np.float32): "tensor(float)", np.dtype(np.bool_): "tensor(bool)"}


def version() -> str:
    """The TensorFlow version whose interpreter runs the flatbuffer."""
    return tf.__version__


class TFLiteModel:
    """A flatbuffer in a `tf.lite.Interpreter` with `threads` threads, run through one signature."""

    runtime = "tflite"

    def __init__(self, path: Path, threads: int):
        with warnings.catch_warnings():  # its notice that ai_edge_litert will replace it is not the user's business
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
        signatures = self.interpreter.get_signature_list()
        self.key = next(iter(signatures)) if signatures else None
        if self.key is None:
            raise ValueError(f"{path} has no signature: convert it with TFLiteConverter.from_keras_model or "
                             "from_saved_model so its inputs keep their names")
        self.runner = self.interpreter.get_signature_runner(self.key)
        self.inputs = list(signatures[self.key]["inputs"])
        self.outputs = list(signatures[self.key]["outputs"])
        self.shape_of: dict[str, tuple] = {}
        self.detail = f"tf.lite.Interpreter, {threads} thread(s), signature {self.key!r}"

    def get_inputs(self) -> list[InputSpec]:
        details = self.runner.get_input_details()
        out = []
        for name in self.inputs:
            d = details[name]
            shape = tuple(None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"]))
            out.append(InputSpec(name, shape, _TYPES.get(np.dtype(d["dtype"]), f"tensor({np.dtype(d['dtype'])})")))
        return out

    def output_names(self) -> list[str]:
        return list(self.outputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = self.runner(**{k: np.asarray(v) for k, v in feeds.items() if k in self.inputs})
        return [np.asarray(result[name]) for name in self.outputs]


def load(path: Path, threads: int = 2) -> TFLiteModel:
    """A ``.tflite`` flatbuffer ready to run."""
    return TFLiteModel(path, threads)
