"""Data-parallel fine-tuning through `unicompress.compress` on torch's own engine (DistributedDataParallel).

The recipe names the strategy; torchrun starts one process per worker and sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT, from which the torch backend joins the process group
(gloo on CPU, nccl for a CUDA model), wraps the model in DDP and gives each rank its share of every batch::

    stages:
      - technique: finetune
        training: {steps: 20, learning_rate: 0.05, optimizer: sgd, distributed: data_parallel}

Launch (2 processes on this machine)::

    torchrun --nproc_per_node 2 examples/ddp_finetune.py
    torchrun --nproc_per_node 2 examples/ddp_finetune.py --zoo minilm-l6 --steps 100   # MiniLM on BBC News
    python examples/ddp_finetune.py --distributed none                                  # the same, one process

Across machines, run on each node (node ranks 0..N-1, the first node's address as the endpoint)::

    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 2 --rdzv_backend c10d \\
        --rdzv_endpoint HOST0:29500 examples/ddp_finetune.py

Every rank gets the same fine-tuned weights back; rank 0 prints the losses and writes `--save-npz`
(a path containing ``{rank}`` makes every rank write its own file). Without torchrun, ``distributed:
data_parallel`` stops with an error that names the launch command.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np


def synthetic_task(zoo_name: str = "tiny-bert", batches: int = 4, batch: int = 8, length: int = 8,
                   seed: int = 0):
    """A small deterministic classification task for a zoo model (tiny-bert tokens or tiny-vit images):
    labels from a fixed rule on the inputs."""
    from unicompress import zoo
    from unicompress.backend.types import TaskData

    cfg = zoo.config_for(zoo_name)
    data = []
    for b in range(batches):
        if zoo_name == "tiny-vit":
            x = zoo.inputs_for(zoo_name, cfg, batch=batch, seed=seed + b)
            y = (np.asarray(x["pixel_values"]).reshape(batch, -1).sum(axis=1) > 0).astype(np.int64)
        else:
            x = zoo.inputs_for(zoo_name, cfg, batch=batch, length=length, seed=seed + b)
            y = (np.asarray(x["input_ids"]).sum(axis=1) % cfg.num_labels).astype(np.int64)
        data.append((x, y))
    return TaskData(train=lambda: iter(data), num_labels=cfg.num_labels)


def recipe(steps: int, learning_rate: float, optimizer: str, batch_size: int, distributed: str,
           backend: str = "torch") -> dict:
    """The one-stage recipe: fine-tuning whose `training.distributed` names the strategy (the TensorFlow
    and Paddle examples run the same recipe with their `backend`)."""
    return {"name": f"{backend}-distributed-finetune", "backend": backend, "evaluate": False,
            "stages": [{"technique": "finetune",
                        "training": {"steps": steps, "learning_rate": learning_rate, "optimizer": optimizer,
                                     "batch_size": batch_size, "seed": 0, "distributed": distributed}}]}


def finetune(zoo_name: str = "tiny-bert", steps: int = 4, learning_rate: float = 0.1, optimizer: str = "sgd",
             batch_size: int = 8, distributed: str = "data_parallel", progress: bool = False,
             backend: str = "torch") -> Any:
    """Fine-tune a zoo model with `unicompress.compress` on `backend`; returns the CompressionResult (for torch
    a plain module: DDP is unwrapped).

    tiny-bert and tiny-vit train on `synthetic_task`; minilm-l6 on BBC News (tokenised offline, length 128).
    """
    import unicompress as uc
    from unicompress.backend import get_backend

    if zoo_name in ("tiny-bert", "tiny-vit"):
        data = synthetic_task(zoo_name, batch=batch_size)
    else:
        from unicompress.data import load_dataset

        data = load_dataset("bbc-news", max_length=128, batch_size=batch_size, seed=0)
    model = get_backend(backend).build_model(zoo_name, seed=0, num_labels=data.num_labels)
    return uc.compress(model, recipe(steps, learning_rate, optimizer, batch_size, distributed, backend), data,
                       backend=backend, progress=progress)


def weights_npz(model: Any) -> bytes:
    """Every parameter and buffer of a torch module as .npz bytes (numpy arrays only: no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    return buf.getvalue()


def summary_line(args: argparse.Namespace, world: int, seconds: float, result: Any, unit: str = "process(es)") -> str:
    """The one line every distributed fine-tuning example prints on its first worker: steps, workers, loss."""
    losses = result.history[0]["loss"]
    return (f"{args.zoo}: {args.steps} steps on {world} {unit} ({args.distributed}) in {seconds:.1f} s; "
            f"loss {losses[0][1]:.4f} -> {losses[-1][1]:.4f}")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The options every distributed fine-tuning example takes (torch, TensorFlow, Paddle)."""
    p.add_argument("--zoo", default="tiny-bert", choices=["tiny-bert", "tiny-vit", "minilm-l6"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--learning-rate", type=float, default=0.05)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--batch-size", type=int, default=8, help="global batch (split across the workers)")
    p.add_argument("--distributed", default="data_parallel", choices=["data_parallel", "none"])
    p.add_argument("--save-npz", type=Path, help="write the final weights (rank 0; every rank if it has {rank})")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(p)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from unicompress_torch.distributed import DistributedLaunchError

    rank = int(os.environ.get("RANK", "0"))
    t0 = time.perf_counter()
    try:
        result = finetune(args.zoo, args.steps, args.learning_rate, args.optimizer, args.batch_size,
                          args.distributed, progress=rank == 0)
    except DistributedLaunchError as err:  # started with plain `python`: say how to launch it
        print(f"{err}\nhere: torchrun --nproc_per_node 2 {sys.argv[0]} {' '.join(argv or sys.argv[1:])}",
              file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    if args.save_npz is not None and (rank == 0 or "{rank}" in str(args.save_npz)):
        from unicompress.fileio import atomic_write_bytes

        atomic_write_bytes(str(args.save_npz).replace("{rank}", str(rank)), weights_npz(result.model))
    if rank == 0:
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_initialized() else 1
        print(summary_line(args, world, seconds, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
