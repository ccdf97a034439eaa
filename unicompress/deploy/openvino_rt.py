"""OpenVINO (CPU plugin) as a deployment runtime: reads ONNX files (QDQ included) directly, and its own IR.

``precision=None`` keeps the inference precision OpenVINO picks for this CPU (bf16 on CPUs with AVX-512 BF16 or
AMX: faster, about 1e-3 away from f32); ``precision="f32"`` keeps float ops in f32. The compiled model runs
one stream with `threads` inference threads and the LATENCY hint, like an ORT session with that many
intra-op threads. Python warnings raised while OpenVINO loads stay out of the terminal.

Example::

    model = load(Path("model-int8.onnx"), threads=2)
    logits, = model.run({"input_ids": ids, "attention_mask": mask})
    save_ir("model-int8.onnx", "out/model-int8.openvino")   # model-int8.xml + .bin, written atomically
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from .runtimes import InputSpec

#: OpenVINO element type names -> ONNX Runtime type strings (what `feeds_for` casts to)
_TYPES = {"i64": "tensor(int64)", "i32": "tensor(int32)", "f32": "tensor(float)", "f64": "tensor(double)",
          "f16": "tensor(float16)", "boolean": "tensor(bool)", "u8": "tensor(uint8)", "i8": "tensor(int8)"}


def _ov() -> Any:
    with warnings.catch_warnings():  # deprecation notices of its submodules are not the user's business
        warnings.simplefilter("ignore")
        import openvino

    return openvino


@lru_cache(maxsize=1)
def _core() -> Any:
    """One OpenVINO Core per process (creating one loads the device plugins)."""
    return _ov().Core()


def version() -> str:
    """The installed openvino package version (e.g. 2026.4.1)."""
    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return str(_ov().get_version()).split("-")[0]


def _port_name(port: Any, index: int) -> str:
    names = port.get_names()
    return port.get_any_name() if names else f"output{index}"


class OpenVinoModel:
    """A file compiled for the OpenVINO CPU plugin with one infer request."""

    runtime = "openvino"

    def __init__(self, path: Path, threads: int, precision: Optional[str] = None):
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        core = _core()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = core.read_model(str(path))
            self.compiled = core.compile_model(self.model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        used = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = str(getattr(used, "get_type_name", lambda: used)())
        self.detail = f"CPU, {threads} thread(s), inference precision {self.precision}"

    def get_inputs(self) -> list[InputSpec]:
        out = []
        for port in self.compiled.inputs:
            shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
            kind = port.get_element_type().get_type_name()
            out.append(InputSpec(port.get_any_name(), shape, _TYPES.get(kind, f"tensor({kind})")))
        return out

    def output_names(self) -> list[str]:
        return [_port_name(p, i) for i, p in enumerate(self.compiled.outputs)]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(dict(feeds))  # copies the outputs (share_outputs=False)
        return [np.asarray(result[port]) for port in self.compiled.outputs]


def load(path: Path, threads: int = 2, precision: Optional[str] = None) -> OpenVinoModel:
    """An ONNX (``.onnx``) or OpenVINO IR (``.xml`` beside its ``.bin``) file compiled for the CPU."""
    return OpenVinoModel(path, threads, precision)


def save_ir(model_path: Union[str, Path], folder: Union[str, Path], compress_to_fp16: bool = False) -> Path:
    """Convert a model file OpenVINO reads to IR (``<stem>.xml`` + ``.bin``) in `folder`, replaced whole.

    Weights stay in their stored precision unless `compress_to_fp16` (OpenVINO's own default halves float
    weights, which changes outputs). Returns the ``.xml`` path. Example:
    ``save_ir("model-int8.onnx", "out/model-int8.openvino")``.
    """
    from ..fileio import atomic_directory

    ov, model_path, folder = _ov(), Path(model_path), Path(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _core().read_model(str(model_path))
        with atomic_directory(folder) as tmp:
            ov.save_model(model, str(tmp / f"{model_path.stem}.xml"), compress_to_fp16=compress_to_fp16)
    return folder / f"{model_path.stem}.xml"
