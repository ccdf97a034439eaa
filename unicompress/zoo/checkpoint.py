"""Zoo checkpoints in safetensors: neutral weights plus the zoo name and config in the metadata.

One file format for every backend: the HF-style names and layouts of `zoo.bert` / `zoo.vit`, so a
model fine-tuned in TensorFlow loads into torch or Paddle unchanged. No pickle is involved: the
metadata is JSON and the tensors are raw arrays.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import CheckpointError
from . import bert, vit

#: metadata keys of a unicompress checkpoint
ZOO_KEY = "unicompress_zoo"
CONFIG_KEY = "unicompress_config"


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds: the zoo architecture, its config and the neutral weights."""

    zoo: str
    config: Any
    weights: dict[str, np.ndarray]


def _shapes(zoo_name: str, config: Any) -> dict[str, tuple[int, ...]]:
    return (vit if zoo_name == "tiny-vit" else bert).weight_shapes(config)


def config_from_weights(zoo_name: str, weights: dict[str, np.ndarray]) -> Any:
    """The zoo config with `num_labels` read off the classifier, after checking every name and shape."""
    from . import config_for

    head = weights.get("classifier.weight")
    if head is None:
        raise ValueError(f"weights of {zoo_name!r} lack classifier.weight: not a zoo model")
    config = config_for(zoo_name, int(head.shape[0]))
    expected = _shapes(zoo_name, config)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(weights[k].shape) != tuple(expected[k]))
    if missing or extra or wrong:
        detail = "; ".join(f"{label}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                           for label, names in (("missing", missing), ("unexpected", extra),
                                                ("wrong shape", wrong)) if names)
        raise ValueError(f"the model does not have the {zoo_name!r} architecture ({detail}); a zoo checkpoint "
                         "holds uncompressed-architecture weights: use the backend's export_native for models "
                         "whose shapes changed (pruned heads, fewer layers)")
    return config


def save_checkpoint(weights: dict[str, np.ndarray], path: Union[str, Path], zoo_name: str) -> Path:
    """Write neutral weights of a zoo model as safetensors, atomically; returns the path."""
    from safetensors.numpy import save

    from ..fileio import atomic_write_bytes

    config = config_from_weights(zoo_name, weights)
    data = save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()},
                metadata={ZOO_KEY: zoo_name, CONFIG_KEY: json.dumps(config.to_dict())})
    return atomic_write_bytes(Path(path), data)


def _unreadable(path: Union[str, Path], exc: BaseException) -> CheckpointError:
    if isinstance(exc, FileNotFoundError):
        return CheckpointError(f"{path}: weights file not found")
    if isinstance(exc, IsADirectoryError) or Path(path).is_dir():
        return CheckpointError(f"{path}: is a directory, not a safetensors weights file")
    if isinstance(exc, PermissionError):
        return CheckpointError(f"{path}: permission denied: the weights file cannot be read")
    if isinstance(exc, OSError):
        return CheckpointError(f"{path}: the weights file cannot be read: {exc.strerror or exc}")
    return CheckpointError(f"{path}: not a valid safetensors file ({type(exc).__name__}: {str(exc)[:200]})")


def safetensors_header(path: Union[str, Path]) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(metadata, name -> shape) of a safetensors file, reading only its header (no tensor is loaded).

    The header is checked as safetensors checks it (offsets, sizes, dtypes against the file's length), so a
    truncated or lying file fails here. Raises CheckpointError naming the file.
    Example: ``meta, shapes = safetensors_header("m.safetensors")``.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: all become ours, with the file
        raise _unreadable(path, exc) from exc
    return metadata, shapes


def read_safetensors(path: Union[str, Path]) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(metadata, name -> float32 array) of a safetensors file; CheckpointError naming the file otherwise."""
    from safetensors.numpy import load_file

    try:  # registers bfloat16 with numpy, so BF16 checkpoints (common on the Hub) read the same whatever was
        import ml_dtypes  # noqa: F401  imported before; without it a BF16 file is refused as unreadable
    except ImportError:
        pass
    metadata, _ = safetensors_header(path)
    try:
        raw = load_file(str(path))
        weights = {k: np.asarray(v).astype(np.float32) for k, v in raw.items()}
    except Exception as exc:  # noqa: BLE001 - e.g. bf16 without ml_dtypes, a file changed under us
        raise _unreadable(path, exc) from exc
    return metadata, weights


def read_checkpoint(path: Union[str, Path], zoo_name: str = "") -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` (or `bert.save_safetensors`, naming `zoo_name`).

    Every problem (missing, unreadable, corrupt, a header that lies, an unknown zoo name, weights of another
    architecture) is a CheckpointError that names the file.
    """
    from . import ZOO_NAMES, USER_MODELS

    metadata, weights = read_safetensors(path)
    name = metadata.get(ZOO_KEY) or zoo_name
    if not name:
        raise CheckpointError(f"{path} names no zoo architecture in its metadata ({ZOO_KEY}); pass zoo_name")
    if name not in ZOO_NAMES + USER_MODELS:
        raise CheckpointError(f"{path}: its metadata names zoo model {str(name)[:60]!r}; known: "
                              f"{', '.join(ZOO_NAMES)}")
    try:
        config = config_from_weights(name, weights)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return Checkpoint(name, config, weights)
