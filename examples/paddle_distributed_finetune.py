"""Data-parallel fine-tuning through `unicompress.compress` on Paddle's own engine (paddle.DataParallel).

The recipe names the strategy; Paddle's launcher starts one process per worker and sets
PADDLE_TRAINER_ID, PADDLE_TRAINERS_NUM, PADDLE_MASTER, ... from which the paddle backend joins the
process group (`paddle.distributed.init_parallel_env`, gloo on CPU), wraps the model in
paddle.DataParallel and gives each rank its share of every batch::

    stages:
      - technique: finetune
        training: {steps: 20, learning_rate: 0.05, optimizer: sgd, distributed: data_parallel}

Launch (2 processes on this machine; each worker's output goes to log/workerlog.N)::

    python -m paddle.distributed.launch --nproc_per_node 2 examples/paddle_distributed_finetune.py
    python -m paddle.distributed.launch --nproc_per_node 2 examples/paddle_distributed_finetune.py \\
        --zoo minilm-l6 --steps 100 --batch-size 16                                    # MiniLM on BBC News
    python examples/paddle_distributed_finetune.py --distributed none                 # the same, one process

Across machines, run the same command on every node with all node addresses::

    python -m paddle.distributed.launch --ips HOST0,HOST1 --nproc_per_node 2 examples/paddle_distributed_finetune.py

Every rank gets the same fine-tuned weights back; rank 0 prints the losses and writes `--save-npz`
(a path containing ``{rank}`` makes every rank write its own file). Without the launcher,
``distributed: data_parallel`` stops with an error that names the launch command.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ddp_finetune  # noqa: E402  (the torch example: the same small task and recipe)


def weights_npz(model: Any) -> bytes:
    """Every parameter and buffer of a paddle layer as .npz bytes (numpy arrays only: no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v.numpy()) for k, v in model.state_dict().items()})
    return buf.getvalue()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ddp_finetune.add_training_arguments(p)
    args = p.parse_args(argv)

    import paddle

    from unicompress_paddle.distributed import DistributedLaunchError

    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    t0 = time.perf_counter()
    try:
        result = ddp_finetune.finetune(args.zoo, args.steps, args.learning_rate, args.optimizer, args.batch_size,
                                       args.distributed, progress=rank == 0, backend="paddle")
    except DistributedLaunchError as err:  # started with plain `python`: say how to launch it
        print(f"{err}\nhere: python -m paddle.distributed.launch --nproc_per_node 2 {sys.argv[0]} "
              f"{' '.join(argv or sys.argv[1:])}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    if args.save_npz is not None and (rank == 0 or "{rank}" in str(args.save_npz)):
        from unicompress.fileio import atomic_write_bytes

        atomic_write_bytes(str(args.save_npz).replace("{rank}", str(rank)), weights_npz(result.model))
    if rank == 0:
        world = paddle.distributed.get_world_size() if paddle.distributed.is_initialized() else 1
        print(ddp_finetune.summary_line(args, world, seconds, result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
