"""Data-parallel training on TensorFlow's own engine: tf.distribute.MultiWorkerMirroredStrategy.

`training.train` asks `data_parallel_for(spec)` for a `DataParallel` when ``training.distributed ==
data_parallel``. The cluster comes from the ``TF_CONFIG`` environment variable that every worker
process is started with (the variable MultiWorkerMirroredStrategy reads; gRPC between the workers)::

    TF_CONFIG='{"cluster": {"worker": ["host0:23456", "host1:23456"]},
                "task": {"type": "worker", "index": 0}}'  python your_script.py   # index 1 on host1

What happens in each step (the same design as torch's DistributedDataParallel): every worker reads the
same global batch and keeps rows ``rank::num_workers``; it runs the model's compiled forward and
backward on them, then the strategy all-reduces the gradients (`strategy.run` of the replica
context's ``all_reduce(SUM)``, a collective over gRPC) and every worker applies the same summed update
with its own optimizer. The loss is weighted by ``n_local / n_global``, so the sum is the gradient of
the full-batch mean loss: the result equals one process training on the whole batch.

Why the forward runs outside `strategy.run` (on the model's plain variables rather than mirrored
ones): the model arrives built (the core copies the user's model), TFMOT's pruning wrappers update
their masks through ``distribution.extended.update``, which under this strategy accepts only
variables created inside its scope, and the stages' losses and hooks hold references to the model's
own layers (distillation taps, pruning masks). So the strategy does what only it can do, the
cross-worker all-reduce; everything else is the single-process step. Before the first step every
variable of the model takes worker 0's value (a broadcast through the same collective), as DDP does.

QAT range variables (TFMOT's ``*_min``/``*_max`` moving averages) see only the worker's rows, so they
are merged after every step: the minimum of the minima and the maximum of the maxima (an all-gather
through the strategy). A moving-average update is monotone in the batch extreme, so with equal state
before the step that is exactly the range one process computes on the whole batch.

TF 2.21 limitation (measured): with more than one worker the strategy must be created before the
first TensorFlow op of the process ("RuntimeError: Collective ops must be configured at program
startup"). `strategy()` is called for you when the adapter first loads TensorFlow in a process that
has TF_CONFIG; a script that builds its own tf_keras model first must call
``unicompress_tensorflow.distributed.strategy()`` as its first TensorFlow call.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from . import ensure_legacy_keras

ensure_legacy_keras()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.eager import context as _context  # noqa: E402
from unicompress.backend.parallel import shard_rows  # noqa: E402
from unicompress.errors import UnicompressError  # noqa: E402
from unicompress.specs import TrainingSpec  # noqa: E402

#: how to start two workers on this machine (the README and the examples show the same)
LAUNCH_COMMAND = ("TF_CONFIG='{\"cluster\": {\"worker\": [\"localhost:23456\", \"localhost:23457\"]}, "
                  "\"task\": {\"type\": \"worker\", \"index\": I}}' python your_script.py   "
                  "(one process per worker, I = 0, 1)")
#: TFMOT's range variables (LastValueQuantizer / MovingAverageQuantizer add_weight(name + "_min"))
_RANGE = re.compile(r"_(min|max)(_\d+)?:\d+$")

_STATE: dict[str, Any] = {"strategy": None, "config": None}


class DistributedLaunchError(UnicompressError, RuntimeError):
    """training.distributed asks for data_parallel, but this process is not a tf.distribute worker."""


def tf_config() -> Optional[dict]:
    """The parsed TF_CONFIG of this process, or None when it is not set."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DistributedLaunchError(f"TF_CONFIG is not JSON ({err}): {raw[:200]!r}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) \
            or not isinstance(config.get("task"), dict):
        raise DistributedLaunchError(f"TF_CONFIG needs a 'cluster' and a 'task' object, got {raw[:200]!r}")
    return config


def _worker_count(config: dict) -> int:
    return sum(len(config["cluster"].get(job, ())) for job in ("chief", "worker"))


def _one_worker_launch() -> bool:
    """A launcher described one worker the torchrun way (WORLD_SIZE=1, RANK=0) and gave no TF_CONFIG."""
    return os.environ.get("WORLD_SIZE") == "1" and os.environ.get("RANK", "0") == "0"


def launched_as_worker() -> bool:
    """True when TF_CONFIG describes this process as a worker (or a launcher described a single worker)."""
    config = tf_config()
    if config is not None:
        return config["task"].get("type") in ("worker", "chief")
    return _one_worker_launch()


def _context_started() -> bool:
    return _context.context()._context_handle is not None  # the eager context exists once any op ran


def strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """This process's MultiWorkerMirroredStrategy (created once, from TF_CONFIG, and reused by every stage).

    Call it before any other TensorFlow op when TF_CONFIG lists more than one worker (TF 2.21 configures
    collective ops only at program start). Raises `DistributedLaunchError` naming the launch command
    when this process is not a worker. Example: ``strategy().num_replicas_in_sync == 2`` in each of two
    workers.
    """
    config = tf_config()
    key = json.dumps(config, sort_keys=True) if config is not None else None
    if not launched_as_worker():
        raise DistributedLaunchError(
            "training.distributed: data_parallel trains on tf.distribute.MultiWorkerMirroredStrategy, which "
            "takes its cluster from the TF_CONFIG environment variable, but TF_CONFIG is not set"
            + (f" (WORLD_SIZE={os.environ['WORLD_SIZE']}: TensorFlow needs every worker's address)"
               if os.environ.get("WORLD_SIZE") else "")
            + f". Start one process per worker:\n    {LAUNCH_COMMAND}\n"
            "or set training.distributed: none to train in this process.")
    if _STATE["strategy"] is not None:
        if _STATE["config"] != key:
            raise DistributedLaunchError("TF_CONFIG changed after this process created its "
                                         "MultiWorkerMirroredStrategy; one process is one worker of one cluster")
        return _STATE["strategy"]
    if config is not None and _worker_count(config) > 1 and _context_started():
        if _context.context()._collective_leader is not None:  # collectives set up by a strategy of the caller's
            raise DistributedLaunchError(
                "a MultiWorkerMirroredStrategy was already created in this process outside unicompress; TF 2.21 "
                "allows one per worker process: create it with `unicompress_tensorflow.distributed.strategy()` "
                "(which returns that one strategy to your code and to every training stage)")
        raise DistributedLaunchError(
            "TensorFlow ran an op before the MultiWorkerMirroredStrategy was created, and TF 2.21 sets up "
            "multi-worker collectives only at program start. Call "
            "`unicompress_tensorflow.distributed.strategy()` (or create tf.distribute.MultiWorkerMirroredStrategy"
            "()) before building or loading any model.")
    _STATE["strategy"] = tf.distribute.MultiWorkerMirroredStrategy()
    _STATE["config"] = key
    return _STATE["strategy"]


def start_if_worker() -> None:
    """Create the strategy now if TF_CONFIG makes this process a multi-worker worker and no op ran yet.

    Called when the adapter first loads TensorFlow, so scripts that only use unicompress need no call
    of their own. Does nothing otherwise (a bad TF_CONFIG is reported when training asks for it).
    """
    try:
        config = tf_config()
    except DistributedLaunchError:
        return
    if (_STATE["strategy"] is None and config is not None and _worker_count(config) > 1
            and config["task"].get("type") in ("worker", "chief") and not _context_started()):
        strategy()


def worker_rank(config: Optional[dict] = None) -> int:
    """This worker's index among all workers: the chief first, then the workers in TF_CONFIG order."""
    config = tf_config() if config is None else config
    if config is None:
        return 0
    task = config["task"]
    chiefs = len(config["cluster"].get("chief", ()))
    return int(task.get("index", 0)) + (chiefs if task.get("type") == "worker" else 0)


@dataclass
class DataParallel:
    """One worker's view of data-parallel training: its rows of a batch and the strategy's collectives.

    Example (inside `training.train`)::

        dp = data_parallel_for(spec)
        x, y = dp.shard(x, y)                         # rows rank::num_workers
        loss, grads = dp.all_reduce_sum(loss, grads)  # inside the compiled step
    """

    strategy: tf.distribute.MultiWorkerMirroredStrategy
    rank: int
    num_workers: int

    @property
    def is_chief(self) -> bool:
        """Worker 0: the one that shows progress (and, by convention, saves files)."""
        return self.rank == 0

    def shard(self, inputs: Any, labels: np.ndarray) -> tuple[Any, np.ndarray]:
        """This worker's rows ``rank::num_workers`` of a global batch (numpy)."""
        local, mine, _ = shard_rows(inputs, np.asarray(labels), self.rank, self.num_workers)
        return local, mine

    def all_reduce_sum(self, loss: tf.Tensor, grads: Sequence[Optional[tf.Tensor]]
                       ) -> tuple[tf.Tensor, list[Optional[tf.Tensor]]]:
        """The sum over workers of the (weighted) loss and of every gradient, by the strategy's collective.

        Call inside a tf.function (the compiled step); None gradients stay None.
        """
        present = [i for i, g in enumerate(grads) if g is not None]

        def reduce(values):
            # tf.identity puts each value on this replica's device (the merge_call needs a device)
            values = [tf.identity(tf.convert_to_tensor(v)) for v in values]
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)

        summed = self.strategy.run(reduce, args=([loss] + [grads[i] for i in present],))
        summed = [self._local(v) for v in summed]
        out: list[Optional[tf.Tensor]] = [None] * len(grads)
        for i, g in zip(present, summed[1:]):
            out[i] = g
        return summed[0], out

    def _local(self, value: Any) -> tf.Tensor:
        """The one local replica's value (each worker has one CPU replica)."""
        local = self.strategy.experimental_local_results(value)
        return local[0]

    def broadcast_from_chief(self, variables: Sequence[tf.Variable]) -> None:
        """Give every worker worker 0's value of each float variable (a sum with zeros elsewhere: exact)."""
        floats = [v for v in variables if v.dtype.is_floating]
        if not floats:
            return
        keep = 1.0 if self.is_chief else 0.0

        @tf.function
        def values():
            def reduce(vs):
                vs = [tf.identity(v) * tf.cast(keep, v.dtype) for v in vs]
                return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, vs)
            return [self._local(v) for v in self.strategy.run(reduce, args=([v.read_value() for v in floats],))]

        for var, value in zip(floats, values()):
            var.assign(value)

    def merge_ranges(self, variables: Sequence[tf.Variable]) -> Any:
        """A compiled function that sets every range variable to its min (``*_min``) or max (``*_max``)
        over workers; None when there is none (e.g. a float model)."""
        ranges = [v for v in variables if v.dtype.is_floating and _RANGE.search(v.name)]
        if not ranges:
            return None
        lows = [bool(re.search(r"_min(_\d+)?:\d+$", v.name)) for v in ranges]

        @tf.function
        def merge() -> None:
            def gather(vs):
                ctx = tf.distribute.get_replica_context()
                return [ctx.all_gather(tf.expand_dims(tf.identity(v), 0), axis=0) for v in vs]
            stacked = self.strategy.run(gather, args=([v.read_value() for v in ranges],))
            for var, low, values in zip(ranges, lows, stacked):
                values = self._local(values)
                var.assign(tf.reduce_min(values, 0) if low else tf.reduce_max(values, 0))

        return merge


def data_parallel_for(training: TrainingSpec) -> Optional[DataParallel]:
    """A `DataParallel` for this worker when ``training.distributed`` is data_parallel, else None.

    Raises `DistributedLaunchError` naming the launch command when the process is not a worker.
    """
    if training.distributed.value == "none":
        return None
    strat = strategy()
    return DataParallel(strat, worker_rank(), int(strat.num_replicas_in_sync))


__all__ = ["DataParallel", "DistributedLaunchError", "LAUNCH_COMMAND", "data_parallel_for", "launched_as_worker",
           "start_if_worker", "strategy", "tf_config", "worker_rank"]
