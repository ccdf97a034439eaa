"""ONNX Runtime sessions of ModelProtos (cached by content), and atomic ONNX files.

Protocol buffers stop at 2 GB: a larger model is refused for `run` and quantization with the way out, and
`export_onnx` writes it with its weights in an external data file beside it.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnx
import onnxruntime as ort

from unicompress.backend.types import Inputs
from unicompress.fileio import atomic_path
from unicompress.onnx.runtime import feeds_for

PROTO_LIMIT = 2 ** 31 - 1  # protobuf's hard limit on one serialized message
_SESSIONS: "OrderedDict[str, Any]" = OrderedDict()
_KEEP = 4  # sessions kept: the model under compression, its copy and a reference


def serialized(model: Any) -> bytes:
    """The model's bytes, or a clear refusal for models over protobuf's 2 GB limit."""
    size = model.ByteSize()
    if size > PROTO_LIMIT:
        raise ValueError(f"the model is {size / 2 ** 30:.1f} GB, over protobuf's 2 GB limit: the onnx backend cannot "
                         "run or quantize it from memory; prune/factorise it here, export_onnx it (written with "
                         "external data), then quantize the file with onnxruntime.quantization directly")
    return model.SerializeToString()


def session(model: Any) -> Any:
    """A CPU InferenceSession of the model's current content (cached)."""
    data = serialized(model)
    key = hashlib.sha1(data).hexdigest()
    if key in _SESSIONS:
        _SESSIONS.move_to_end(key)
        return _SESSIONS[key]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    _SESSIONS[key] = sess
    while len(_SESSIONS) > _KEEP:
        _SESSIONS.popitem(last=False)
    return sess


def run(model: Any, inputs: Inputs) -> np.ndarray:
    """The first output of one ORT run (inputs cast to the graph's declared types; extra ones dropped)."""
    sess = session(model)
    return np.asarray(sess.run([sess.get_outputs()[0].name], feeds_for(sess, inputs))[0])


def export_onnx(model: Any, path: Union[str, Path]) -> Path:
    """Write the model at `path` atomically; over 2 GB, its weights go to ``<name>.data`` beside it."""
    path = Path(path)
    if model.ByteSize() <= PROTO_LIMIT:
        with atomic_path(path) as tmp:
            onnx.save_model(model, str(tmp))
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # both files appear together, or neither
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(copy, os.path.join(tmp, path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=path.name + ".data")
        os.replace(os.path.join(tmp, path.name + ".data"), str(path) + ".data")
        os.replace(os.path.join(tmp, path.name), path)
    return path


def load_onnx(path: Union[str, Path], backend: str = "onnx") -> Any:
    """An ONNX file as a ModelProto, external data loaded (recipe factory ``unicompress_onnx.runtime:load_onnx``)."""
    if backend != "onnx":
        raise ValueError(f"load_onnx makes models for backend 'onnx', not {backend!r}")
    return onnx.load(str(path))
