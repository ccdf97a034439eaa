"""Data-parallel fine-tuning through `unicompress.compress` on TensorFlow's own engine (tf.distribute).

The recipe names the strategy; the TensorFlow backend trains on tf.distribute.MultiWorkerMirroredStrategy,
which takes the cluster from the TF_CONFIG environment variable of each worker process (one process per
worker, gRPC between them). Every worker reads the same global batches, trains on its rows, and the strategy
all-reduces the gradients, so every worker ends with the weights one process would get on the whole batch::

    stages:
      - technique: finetune
        training: {steps: 20, learning_rate: 0.05, optimizer: sgd, distributed: data_parallel}

Launch 2 workers on this machine (two shells, or `&`), the same command with task index 0 and 1::

    TF_CONFIG='{"cluster": {"worker": ["localhost:23456", "localhost:23457"]}, "task": {"type": "worker", "index": 0}}' \\
        python examples/tf_distributed_finetune.py
    TF_CONFIG='{"cluster": {"worker": ["localhost:23456", "localhost:23457"]}, "task": {"type": "worker", "index": 1}}' \\
        python examples/tf_distributed_finetune.py

or let this script start both on free local ports and wait for them::

    python examples/tf_distributed_finetune.py --workers 2
    python examples/tf_distributed_finetune.py --workers 2 --zoo minilm-l6 --steps 100   # MiniLM on BBC News
    python examples/tf_distributed_finetune.py --distributed none                        # one process

Across machines, list every worker's host:port in the cluster and start one process on each host with its
own index. TF 2.21 sets up multi-worker collectives only at program start, so a worker creates its strategy
before any TensorFlow op: the backend does that when it first loads TensorFlow; a script that builds its own
tf_keras model first calls `unicompress_tensorflow.distributed.strategy()` as its first TensorFlow call
(this script does, to show it). Without TF_CONFIG, ``distributed: data_parallel`` stops with an error that
names the launch command. Compare examples/ddp_finetune.py (torch, torchrun).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ddp_finetune  # noqa: E402  (the torch example: the same small task and recipe)


def weights_npz(model: Any) -> bytes:
    """Every weight of a tf_keras model (get_weights order) as .npz bytes (numpy arrays only: no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, *model.get_weights())
    return buf.getvalue()


def free_ports(n: int) -> list[int]:
    """n free TCP ports on localhost (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def worker_configs(n: int) -> list[str]:
    """TF_CONFIG of each of n workers on this machine."""
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(n)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(n)]


def spawn(n: int, argv: list[str], timeout: float = 1800) -> int:
    """Start n local workers of this script (each with its TF_CONFIG) and wait; returns the worst exit code."""
    procs = []
    for config in worker_configs(n):
        env = dict(os.environ, TF_CONFIG=config)
        procs.append(subprocess.Popen([sys.executable, __file__, *argv], env=env))
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(124)
    return max(codes)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ddp_finetune.add_training_arguments(p)
    p.add_argument("--workers", type=int, default=0, help="start this many local workers (TF_CONFIG each) and wait")
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    if args.workers:
        if os.environ.get("TF_CONFIG"):
            print("--workers starts its own workers: unset TF_CONFIG", file=sys.stderr)
            return 2
        rest = [a for i, a in enumerate(argv) if a != "--workers" and (i == 0 or argv[i - 1] != "--workers")]
        return spawn(args.workers, [a for a in rest if not a.startswith("--workers=")])

    from unicompress_tensorflow import distributed

    rank = 0
    try:
        if args.distributed == "data_parallel":
            # the first TensorFlow call of a worker (TF 2.21: collectives are set up at program start)
            distributed.strategy()
            rank = distributed.worker_rank()
        t0 = time.perf_counter()
        result = ddp_finetune.finetune(args.zoo, args.steps, args.learning_rate, args.optimizer, args.batch_size,
                                       args.distributed, progress=rank == 0, backend="tensorflow")
    except distributed.DistributedLaunchError as err:  # started without TF_CONFIG: say how to launch it
        print(f"{err}\nor here: python {sys.argv[0]} --workers 2 {' '.join(argv)}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    if args.save_npz is not None and (rank == 0 or "{rank}" in str(args.save_npz)):
        from unicompress.fileio import atomic_write_bytes

        atomic_write_bytes(str(args.save_npz).replace("{rank}", str(rank)), weights_npz(result.model))
    if rank == 0:
        world = distributed.strategy().num_replicas_in_sync if args.distributed == "data_parallel" else 1
        print(ddp_finetune.summary_line(args, world, seconds, result, unit="worker(s)"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
