"""Fine-tune all-MiniLM-L6-v2 on BBC News in one framework and save the checkpoint the examples start from.

Each backend fine-tunes its own copy (the same neutral call, `unicompress.compress` with a one-stage
finetune recipe, run by that framework's training loop). The checkpoint (about 91 MB of float32
safetensors, neutral HF-style names, zoo name and config in the metadata) is written atomically to
``examples/.cache/minilm-l6-bbc-news-<backend>.safetensors`` (git-ignored) next to a small JSON with
its test accuracy. The example recipes name ``minilm-l6-bbc-news-{backend}.safetensors``, so a recipe
run on paddle starts from the model fine-tuned in Paddle; `run_example.py` calls `ensure_checkpoint()`
so each is built once, on first use. Any checkpoint loads into any backend (`unicompress.load_model`).
Measured (2 epochs, length 128, 2 cores): torch 97.65% in 236 s, TensorFlow 97.18% in 659 s and Paddle
98.12% in 2885 s (both while other jobs shared the cores).

    python examples/finetune_minilm.py                        # torch, 2 epochs, length 128
    python examples/finetune_minilm.py --backend tensorflow   # the same in TensorFlow
    python examples/finetune_minilm.py --epochs 1 --out /tmp/minilm.safetensors
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "examples" / ".cache"
#: the recipes' weights path; {backend} is filled in per backend (ModelSource.weights_for)
CHECKPOINT_PATTERN = "examples/.cache/minilm-l6-bbc-news-{backend}.safetensors"


def checkpoint_for(backend: str = "torch") -> Path:
    """Where the MiniLM checkpoint fine-tuned in `backend` lives."""
    return ROOT / CHECKPOINT_PATTERN.format(backend=backend)


DEFAULT_CHECKPOINT = checkpoint_for("torch")


def backend_of_checkpoint(path: Path, pattern: str = CHECKPOINT_PATTERN) -> Optional[str]:
    """The backend whose checkpoint of `pattern` (default: the fine-tuned MiniLM's) `path` is, or None."""
    for backend in ("torch", "tensorflow", "paddle"):
        if Path(path).resolve() == (ROOT / pattern.format(backend=backend)).resolve():
            return backend
    return None


def finetune(out: Path = DEFAULT_CHECKPOINT, epochs: float = 2.0, max_length: int = 128, batch_size: int = 16,
             learning_rate: float = 5e-5, seed: int = 0, zoo_name: str = "minilm-l6",
             data_kwargs: Optional[dict] = None, progress: bool = True, backend: str = "torch") -> dict:
    """Fine-tune the zoo model on BBC News with `backend` and save its weights; returns the metrics."""
    from unicompress.data import load_dataset

    data = load_dataset("bbc-news", max_length=max_length, batch_size=batch_size, seed=seed, **(data_kwargs or {}))
    steps = max(1, math.ceil(epochs * data.extra["sizes"]["train"] / batch_size))
    return train_and_save(zoo_name, data, out, steps=steps, learning_rate=learning_rate, batch_size=batch_size,
                          seed=seed, backend=backend, progress=progress,
                          extra={"epochs": epochs, "max_length": max_length})


def train_and_save(zoo_name: str, data, out: Path, *, steps: int, learning_rate: float, batch_size: int,
                   seed: int = 0, backend: str = "torch", progress: bool = True,
                   extra: Optional[dict] = None) -> dict:
    """Train the zoo model on `data` with `backend` (one neutral call: a one-stage finetune recipe, warm-up
    over the first tenth), save its weights as a zoo checkpoint at `out` and the metrics next to it (`out`
    with .json); returns them."""
    import unicompress as uc
    from unicompress.backend import get_backend
    from unicompress.fileio import atomic_write_text

    adapter = get_backend(backend)
    model = adapter.build_model(zoo_name, num_labels=data.num_labels, seed=seed)
    spec = uc.FineTuneSpec(training={"steps": steps, "learning_rate": learning_rate, "batch_size": batch_size,
                                     "warmup_steps": max(1, steps // 10), "seed": seed, "log_every": 10})
    t0 = time.perf_counter()
    result = uc.compress(model, spec, data, backend=backend, progress=progress)
    seconds = time.perf_counter() - t0
    uc.save_weights(result.model, out, zoo=zoo_name, backend=backend)
    info = {"checkpoint": str(out), "backend": backend, "zoo": zoo_name, "steps": steps, **(extra or {}),
            "batch_size": batch_size, "learning_rate": learning_rate, "seconds": round(seconds, 1),
            "accuracy_before": result.report.metrics_before.get("accuracy"),
            "accuracy_after": result.report.metrics_after.get("accuracy"), "cpus": os.cpu_count()}
    atomic_write_text(Path(out).with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return info


def build_once(path: Path, what: str, build: Callable[[Path], dict]) -> Path:
    """Run `build(path)` (which writes the checkpoint and returns its metrics) unless `path` exists."""
    path = Path(path)
    if not path.exists():
        print(f"[checkpoint] {path} is missing: {what}", file=sys.stderr)
        info = build(path)
        print(f"[checkpoint] test accuracy {info['accuracy_after']:.4f} after {info['steps']} steps "
              f"in {info['seconds']:.0f} s -> {path}", file=sys.stderr)
    return path


def ensure_checkpoint(path: Path = DEFAULT_CHECKPOINT, **kwargs) -> Path:
    """Build the fine-tuned checkpoint at `path` unless it is already there."""
    return build_once(path, f"fine-tuning MiniLM on BBC News once with {kwargs.get('backend', 'torch')} "
                      "(a few minutes on 2 cores)", lambda p: finetune(p, **kwargs))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="torch", choices=("torch", "tensorflow", "paddle"),
                   help="framework that fine-tunes (default: torch)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"safetensors file to write (default: {CHECKPOINT_PATTERN})")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info = finetune(args.out or checkpoint_for(args.backend), args.epochs, args.max_length, args.batch_size,
                    args.learning_rate, args.seed, progress=not args.no_progress, backend=args.backend)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
