"""Data-parallel training on Paddle's own engine: paddle.distributed + paddle.DataParallel.

`train` asks `data_parallel_for(training)` for a `DataParallel` when ``training.distributed ==
data_parallel``. It joins the process group that ``python -m paddle.distributed.launch`` describes in
the environment (PADDLE_TRAINER_ID, PADDLE_TRAINERS_NUM, PADDLE_CURRENT_ENDPOINT, PADDLE_MASTER) with
`paddle.distributed.init_parallel_env()`; on a CPU build the collectives run on gloo
(``PADDLE_DISTRI_BACKEND=gloo``: the launcher sets it on CPU builds; set here too when unset, because
with Paddle's default "auto" init_parallel_env takes its older GLOOParallelContext path with an HTTP
key-value server instead of the gloo process group). A
one-worker launch described by the generic variables (RANK=0, WORLD_SIZE=1, MASTER_ADDR, MASTER_PORT, as
torchrun sets them) trains in this process without any collective; several workers need Paddle's launcher.

Why the result matches one process: every rank reads the same global batches and keeps rows
``rank::world_size``; its loss is scaled by ``world_size * n_local / n_global`` so that the gradient
average paddle.DataParallel makes equals the gradient of the full-batch mean loss, even when the batch
does not split evenly. Parameters trained beside the model (outside the DataParallel layer) are averaged
here with one all_reduce; QAT's moving-average abs-max quanters take the MAX over ranks of their
input's abs-max inside the forward (`global_range_forward`), so every rank fake-quantizes with the
range one process would see on the whole batch and their states stay equal.

Launch (2 processes on this machine)::

    python -m paddle.distributed.launch --nproc_per_node 2 your_script.py
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from unicompress.backend.parallel import shard_rows
from unicompress.errors import UnicompressError
from unicompress.specs import TrainingSpec

from .compat import paddle

#: the command a user needs when data_parallel is asked for in a plain `python` process
LAUNCH_COMMAND = "python -m paddle.distributed.launch --nproc_per_node 2 your_script.py"
#: what paddle.distributed.launch sets for every worker (init_parallel_env reads them)
PADDLE_VARIABLES = ("PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM")
#: what generic launchers (torchrun) set: accepted for a one-worker launch
GENERIC_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedLaunchError(UnicompressError, RuntimeError):
    """training.distributed asks for data_parallel, but no launcher started this process."""


def launched() -> bool:
    """True when paddle.distributed.launch (or a generic launcher) described this worker."""
    return all(os.environ.get(n) for n in PADDLE_VARIABLES) or all(os.environ.get(n) for n in GENERIC_VARIABLES)


def _rank_and_world() -> tuple[int, int]:
    if all(os.environ.get(n) for n in PADDLE_VARIABLES):
        return int(os.environ["PADDLE_TRAINER_ID"]), int(os.environ["PADDLE_TRAINERS_NUM"])
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def init_parallel_env() -> tuple[int, int]:
    """Join the launcher's process group (once per process); returns (rank, world_size).

    Raises `DistributedLaunchError` naming the launch command when no launcher described this process.
    Example: under ``python -m paddle.distributed.launch --nproc_per_node 2 train.py`` it returns (0, 2)
    on the first worker and (1, 2) on the second, both in one gloo group.
    """
    if not launched():
        raise DistributedLaunchError(
            "training.distributed: data_parallel needs one process per worker started by Paddle's launcher, but "
            f"{' / '.join(PADDLE_VARIABLES)} are not set. Launch the script with\n"
            f"    {LAUNCH_COMMAND}\n"
            "(one process per CPU worker; add --ips HOST1,HOST2 to span machines), "
            "or set training.distributed: none to train in this process.")
    rank, world = _rank_and_world()
    if world < 2:
        return rank, world  # one worker: nothing to communicate with (init_parallel_env would do nothing)
    if not all(os.environ.get(n) for n in PADDLE_VARIABLES):
        # measured under torchrun (2 workers): init_parallel_env fails with "(NotFound) The environment
        # variable 'PADDLE_TRAINER_ENDPOINTS' cannot be found", and Paddle's TCP store would want the
        # MASTER_PORT that torchrun's own store already holds
        raise DistributedLaunchError(
            f"training.distributed: data_parallel on paddle with {world} workers needs Paddle's launcher "
            f"(RANK/WORLD_SIZE from another launcher such as torchrun are not enough). Launch the script with\n"
            f"    {LAUNCH_COMMAND}")
    if not paddle.distributed.is_initialized():
        if not (paddle.is_compiled_with_cuda() or paddle.is_compiled_with_xpu()):
            os.environ.setdefault("PADDLE_DISTRI_BACKEND", "gloo")
        paddle.distributed.init_parallel_env()
    return paddle.distributed.get_rank(), paddle.distributed.get_world_size()


class _Forward(paddle.nn.Layer):
    """A layer whose forward is `fn` over `model`: lets paddle.DataParallel wrap a custom forward
    (distillation's `features`) while its reducer still sees every parameter of `model`."""

    def __init__(self, model: Any, fn: Callable[..., Any]):
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self, *tensors):
        return self._fn(*tensors)


def _quanter_state(model: Any) -> list[Any]:
    """The moving-average abs-max state of QAT quanters (paddle.quantization FakeQuanterWithAbsMaxObserver):
    `_accum` and `_scale` of each (channel-wise weight quanters have no `_accum`: their scales follow the
    weights, which agree on every rank)."""
    out = []
    for layer in model.sublayers(include_self=True):
        if isinstance(getattr(layer, "_accum", None), paddle.Tensor):
            out += [layer._accum, layer._scale]
    return out


def _all_reduce_max(value: Any) -> Any:
    paddle.distributed.all_reduce(value, op=paddle.distributed.ReduceOp.MAX)
    return value


def global_range_forward(quanter: Any, reduce_max: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A forward for a moving-average abs-max quanter whose range is ``reduce_max(max |x|)``.

    Paddle's op (`fake_quantize_dequantize_moving_average_abs_max`) takes the range from its input
    alone and has no argument for another one. So the global maximum is appended to the flattened input
    as one extra element: the native op then updates its state with max(local, global) = global and
    fake-quantizes every element with that scale; the extra element is dropped from the output. Its
    gradient is the straight-through estimate, so the input's gradient is unchanged. In eval mode (no
    state update) the native forward runs as is.
    """
    native = type(quanter).forward.__get__(quanter)

    def forward(x):
        if not quanter.training:
            return native(x)
        with paddle.no_grad():
            m = reduce_max(paddle.max(paddle.abs(x)).reshape([1]).astype(x.dtype))
        out = native(paddle.concat([x.reshape([-1]), m]))
        return out[:-1].reshape(x.shape)

    return forward


@dataclass
class DataParallel:
    """One rank's view of data-parallel training: shard batches, wrap the model, average what
    paddle.DataParallel does not.

    Example (inside `training.train`)::

        dp = data_parallel_for(spec)
        wrapped = dp.wrap(model, forward)
        x, y, scale = dp.shard(x, y)
        loss = loss_of(wrapped(*tensors)) * scale
        loss.backward(); dp.average_gradients(extra)
    """

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that shows progress (and, by convention, saves files)."""
        return self.rank == 0

    @property
    def communicates(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: Any, forward: Optional[Callable[..., Any]] = None) -> Any:
        """`model` (or `forward` over it) inside paddle.DataParallel, which broadcasts rank 0's parameters
        and buffers first and averages the gradients during backward.

        The wrapped layer is called like the model; with one worker it is returned unwrapped.
        """
        layer = _Forward(model, forward) if forward is not None else model
        if not self.communicates:
            return layer
        return paddle.DataParallel(layer)

    def shard(self, inputs: dict[str, np.ndarray], labels: np.ndarray
              ) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
        """This rank's rows ``rank::world_size`` of a global batch and the loss scale
        ``world_size * n_local / n_global`` that makes the gradient average the full-batch mean gradient."""
        local, mine, share = shard_rows(inputs, np.asarray(labels), self.rank, self.world_size)
        return local, mine, self.world_size * share

    def mean(self, value: Any) -> float:
        """The average over ranks of a (scaled) scalar tensor: the global loss, identical on every rank."""
        total = value.detach().reshape([1]).clone()
        if self.communicates:
            paddle.distributed.all_reduce(total)
        return float(total.numpy()[0]) / self.world_size

    def average_gradients(self, params: Sequence[Any]) -> None:
        """Average the gradients of parameters outside the DataParallel layer (one all_reduce each)."""
        if not params or not self.communicates:
            return
        for p in params:
            # p.grad is the parameter's gradient tensor itself: all_reduce writes into it. Its in-place
            # scale_ is refused ("Leaf Var ... can't use inplace strategy"), set_value copies data only.
            # A parameter the loss never reached has no gradient on any rank (same graph): all skip it.
            grad = p.grad
            if grad is not None:
                paddle.distributed.all_reduce(grad)
                grad.set_value(grad / self.world_size)

    @contextlib.contextmanager
    def global_quanter_ranges(self, model: Any) -> Iterator[None]:
        """While training, QAT's moving-average quanters take the abs-max of the whole global batch.

        Each rank sees only its rows, so its activation quanters would fake-quantize with a range of their
        own, every layer's input would drift from what one process computes, and no merge after the step
        could repair it (measured: ranges of deeper layers differ). See `global_range_forward`.
        """
        quanters = [] if not self.communicates else \
            [q for q in model.sublayers() if isinstance(getattr(q, "_accum", None), paddle.Tensor)]
        for q in quanters:
            object.__setattr__(q, "forward", global_range_forward(q, _all_reduce_max))
        try:
            yield
        finally:
            for q in quanters:
                q.__dict__.pop("forward", None)

    def broadcast_from_main(self, tensors: Sequence[Any]) -> None:
        """Copy rank 0's values of `tensors` into every rank (in place)."""
        if not self.communicates:
            return
        for t in tensors:
            paddle.distributed.broadcast(t, src=0)


def data_parallel_for(training: TrainingSpec) -> Optional[DataParallel]:
    """A `DataParallel` for this rank when ``training.distributed`` is data_parallel, else None."""
    if training.distributed.value == "none":
        return None
    rank, world = init_parallel_env()
    return DataParallel(rank, world)


__all__ = ["DataParallel", "DistributedLaunchError", "GENERIC_VARIABLES", "LAUNCH_COMMAND", "PADDLE_VARIABLES",
           "data_parallel_for", "init_parallel_env", "launched"]
