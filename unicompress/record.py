"""The reproducibility record of a run: enough for someone else to rerun it and compare.

Versions (Python, unicompress, the backend's framework and toolkit, ONNX Runtime), the recipe as run and
its hash, the seeds, a hash of the input weights, a fingerprint of the data used, and the machine (CPU
model and the instruction sets that change int8 speed, cores, thread settings). No framework is imported:
versions come from the installed distributions' metadata.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from importlib import metadata
from typing import Any, Optional

import numpy as np

from .backend.types import Inputs, TaskData

#: CPU flags that change what compressed models run at (int8 dot products, bf16, AMX)
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONHASHSEED")
_DATA_BATCHES = 2  # batches of each data source hashed for the fingerprint


def versions(requirements: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of unicompress, the backend's requirements and the ONNX tools."""
    names = ["unicompress", "numpy", "onnx", "onnxruntime"]
    names += [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in requirements]
    out = {"python": platform.python_version()}
    for name in dict.fromkeys(names):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, Any]:
    """CPU model, the flags that matter for compressed models, cores and thread settings."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "cpu": model, "cpu_flags": [f for f in _CPU_FLAGS if f in flags],
            "cores": cores, "env": {k: os.environ[k] for k in _THREAD_VARS if k in os.environ}}


def weights_hash(weights: dict[str, np.ndarray]) -> str:
    """sha256 over every weight (name, shape, dtype and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        w = np.ascontiguousarray(weights[name])
        h.update(f"{name}:{w.shape}:{w.dtype};".encode())
        h.update(w.tobytes())
    return h.hexdigest()


def _hash_inputs(h: "hashlib._Hash", x: Inputs) -> None:
    items = sorted(x.items()) if isinstance(x, dict) else [("", x)]
    for key, value in items:
        value = np.ascontiguousarray(value)
        h.update(f"{key}:{value.shape}:{value.dtype};".encode())
        h.update(value.tobytes())


def data_fingerprint(data: Optional[TaskData]) -> dict[str, Any]:
    """sha256 of the first batches of each data source (train, calibration, evaluation), with their shapes."""
    if data is None:
        return {}
    out: dict[str, Any] = {"task": data.task, "num_labels": data.num_labels}
    for source in ("train", "calibration", "evaluation"):
        make = getattr(data, source)
        if make is None:
            continue
        h, shapes, n = hashlib.sha256(), None, 0
        try:
            for batch in make():
                x = batch[0] if isinstance(batch, tuple) else batch
                _hash_inputs(h, x)
                if isinstance(batch, tuple):
                    _hash_inputs(h, np.asarray(batch[1]))
                shapes = shapes or ({k: list(np.shape(v)) for k, v in x.items()} if isinstance(x, dict)
                                    else list(np.shape(x)))
                n += 1
                if n >= _DATA_BATCHES:
                    break
        except Exception as exc:  # noqa: BLE001 - the record only describes the data; the stage reading it reports
            out[source] = {"error": f"{type(exc).__name__}: {exc}", "batches_hashed": n}
            continue
        out[source] = {"sha256_first_batches": h.hexdigest(), "batches_hashed": n, "first_batch_shapes": shapes}
    return out


def recipe_hash(recipe_json: dict) -> str:
    """sha256 of the recipe's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(recipe_json, sort_keys=True, default=str).encode()).hexdigest()


def seeds_of(recipe_json: dict) -> dict[str, int]:
    """Every `seed` field of the recipe, by its dotted path."""
    out: dict[str, int] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "seed" and isinstance(v, int):
                    out[f"{path}{k}"] = v
                else:
                    walk(v, f"{path}{k}.")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}{i}.")
    walk(recipe_json, "")
    return out


def reproducibility_record(adapter: Any, recipe: Any, input_weights: dict[str, np.ndarray],
                           data: Optional[TaskData]) -> dict[str, Any]:
    """The record of one run (see the module docstring). Example: ``report.record["recipe_sha256"]``."""
    as_json = recipe.model_dump(mode="json")
    return {"versions": versions(tuple(getattr(adapter, "requirements", ()))), "backend": adapter.name,
            "recipe": as_json, "recipe_sha256": recipe_hash(as_json), "seeds": seeds_of(as_json),
            "input_weights_sha256": weights_hash(input_weights), "input_weights_layers": len(input_weights),
            "data": data_fingerprint(data), "machine": machine()}
