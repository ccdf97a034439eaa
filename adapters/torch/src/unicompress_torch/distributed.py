"""Data-parallel training on torch's own engine: torch.distributed + DistributedDataParallel under torchrun.

`train_loop` asks `data_parallel_for(training, model)` for a `DataParallel` when
``training.distributed == data_parallel``. It joins the process group torchrun describes in the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) with the gloo backend on CPU
(nccl when the model lives on a CUDA device), or reuses a group the caller already initialised.

Why the result matches one process: every rank reads the same global batches and keeps rows
``rank::world_size`` of each; its loss is scaled by ``world_size * n_local / n_global`` so that DDP's
gradient average equals the gradient of the full-batch mean loss even when the batch does not split
evenly. Parameters trained beside the model (`extra_params`, e.g. distillation projections) are not
inside the DDP module, so their gradients are averaged here with one `all_reduce`; range observers
(QAT's min_val/max_val) are merged every step (min of minima, max of maxima).

Launch (the process group comes from torchrun)::

    torchrun --nproc_per_node 2 your_script.py
"""
from __future__ import annotations

import atexit
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from unicompress.backend.parallel import shard_rows
from unicompress.errors import UnicompressError
from unicompress.specs import TrainingSpec

#: the command a user needs when data_parallel is asked for in a plain `python` process
LAUNCH_COMMAND = "torchrun --nproc_per_node 2 your_script.py"
#: environment variables torchrun sets for every worker (env:// initialisation reads them)
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedLaunchError(UnicompressError, RuntimeError):
    """training.distributed asks for data_parallel, but this process was not started by torchrun."""


def launched_by_torchrun() -> bool:
    """True when the torchrun worker variables (RANK, WORLD_SIZE, ...) are all set."""
    return all(os.environ.get(name) for name in TORCHRUN_VARIABLES)


def _backend_for(device: torch.device) -> str:
    # nccl only serves CUDA tensors; gloo serves CPU (and would also work on CUDA, but slower)
    return "nccl" if device.type == "cuda" else "gloo"


def _model_device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def init_process_group(device: torch.device) -> bool:
    """Join torchrun's process group (env://) unless one exists; returns True when it was created here.

    Raises `DistributedLaunchError` naming the launch command when the torchrun variables are missing.
    Example: under ``torchrun --nproc_per_node 2 train.py``, ``init_process_group(torch.device("cpu"))``
    joins a 2-rank gloo group.
    """
    if dist.is_initialized():
        return False
    if not dist.is_available():
        raise DistributedLaunchError("training.distributed: data_parallel needs torch.distributed, which this "
                                     "torch build lacks; use distributed: none")
    if not launched_by_torchrun():
        missing = [n for n in TORCHRUN_VARIABLES if not os.environ.get(n)]
        raise DistributedLaunchError(
            f"training.distributed: data_parallel needs one process per worker started by torchrun, but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set. Launch the script with\n"
            f"    {LAUNCH_COMMAND}\n"
            "(or `python -m torch.distributed.run --nproc_per_node 2 your_script.py`), "
            "or set training.distributed: none to train in this process.")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=_backend_for(device), init_method="env://")
    _leave_group_at_exit()
    return True


_EXIT = {"failed": False}


def _leave_group_at_exit() -> None:
    """Leave the group we created when the script ends: barrier, destroy it, then let gloo's threads finish.

    Why (torch 2.13, gloo; gdb backtrace): a gloo work object keeps the tensors of its collective (and a
    barrier keeps the works still in flight). The `pt_gloo_runloop` thread drops its reference just after
    the main thread saw the work complete; when that happens while the interpreter is finalizing, freeing
    the tensors takes the GIL, the thread is killed, and the process aborts with "terminate called without
    an active exception" (seen in about 1 run of 5 without any cleanup). destroy_process_group does not
    join those threads, so after it the main thread sleeps briefly, releasing the GIL while the
    interpreter is still alive. A rank that dies of an uncaught exception skips all of this (its peers may
    be inside another collective, and torchrun stops them anyway).
    """
    previous = sys.excepthook

    def note_failure(*exc_info) -> None:
        _EXIT["failed"] = True
        previous(*exc_info)

    def leave() -> None:
        if _EXIT["failed"] or not dist.is_initialized():
            return
        dist.barrier()
        dist.destroy_process_group()
        time.sleep(0.25)  # GIL released: the run-loop threads free their last works now, not during finalization

    sys.excepthook = note_failure
    atexit.register(leave)


@dataclass
class DataParallel:
    """One rank's view of data-parallel training: shard batches, wrap the model, average what DDP does not.

    Example (inside `train_loop`)::

        dp = data_parallel_for(training, model)
        ddp = dp.wrap(model)
        inputs, labels, scale = dp.shard(inputs, labels)
        loss = loss_fn(ddp, inputs, labels) * scale
        loss.backward(); dp.average_gradients(extra)
    """

    rank: int
    world_size: int
    device: torch.device
    created_group: bool = False
    _wrapped: Optional[DistributedDataParallel] = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that shows progress (and, by convention, saves files)."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """`model` inside DDP (which broadcasts rank 0's parameters and buffers to every rank first).

        static_graph=True: every step of a stage uses the same parameters (prune masks and L0 gates change
        values, not the graph), so DDP learns once, in the first step, which parameters are unused (a
        frozen branch, a head the loss never reaches) instead of failing with "Expected to have finished
        reduction" or paying find_unused_parameters' graph walk on every step.
        """
        model.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self._wrapped = DistributedDataParallel(model, device_ids=ids, static_graph=True)
        return self._wrapped

    def unwrap(self) -> None:
        """Drop the DDP wrapper (its reducer holds autograd hooks on the parameters)."""
        self._wrapped = None

    def shard(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
        """This rank's rows ``rank::world_size`` of a global batch, on the model's device, and the loss scale
        ``world_size * n_local / n_global`` that makes DDP's average the full-batch mean gradient."""
        local, mine, share = shard_rows(inputs, labels, self.rank, self.world_size)
        return {k: v.to(self.device) for k, v in local.items()}, mine.to(self.device), self.world_size * share

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a (scaled) scalar over ranks: the global loss, identical on every rank."""
        total = value.detach().clone().reshape(1).to(self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[0] / self.world_size

    def sync_observers(self, model: nn.Module) -> None:
        """Merge the range observers' statistics (QAT, torchao/torch.ao): min of ``min_val``, max of ``max_val``.

        Each rank observed only its shard. A moving-average update is monotone in the batch minimum, so with
        equal state before the step, the min over ranks of each rank's update is exactly the update one
        process makes on the whole batch (likewise for the maximum). One all_reduce per kind, every step.
        """
        observers = [m for m in model.modules() if isinstance(getattr(m, "min_val", None), torch.Tensor)
                     and isinstance(getattr(m, "max_val", None), torch.Tensor)]
        for name, op in (("min_val", dist.ReduceOp.MIN), ("max_val", dist.ReduceOp.MAX)):
            tensors = [getattr(m, name) for m in observers if getattr(m, name).numel()]
            if not tensors:
                continue
            flat = torch.cat([t.detach().reshape(-1) for t in tensors])
            dist.all_reduce(flat, op=op)
            offset = 0
            with torch.no_grad():
                for t in tensors:
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()

    def average_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Average the gradients of parameters that live outside the DDP module (one flat all_reduce)."""
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def broadcast_from_main(self, tensors: Sequence[torch.Tensor]) -> None:
        """Copy rank 0's values of `tensors` into every rank (in place)."""
        for t in tensors:
            dist.broadcast(t.data, src=0)

    def sync_module(self, model: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers. Parameters already agree (same averaged
        gradients); other buffers may not (e.g. BatchNorm statistics of the rank's own rows)."""
        with torch.no_grad():
            self.broadcast_from_main([*model.parameters(), *model.buffers()])


def data_parallel_for(training: TrainingSpec, model: nn.Module) -> Optional[DataParallel]:
    """A `DataParallel` for this rank when ``training.distributed`` is data_parallel, else None.

    The device follows the model: a CPU model trains with gloo; a CUDA model moves to ``cuda:LOCAL_RANK``
    and trains with nccl.
    """
    if training.distributed.value == "none":
        return None
    device = _model_device(model)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", device.index or 0)))
    created = init_process_group(device)
    return DataParallel(dist.get_rank(), dist.get_world_size(), device, created)


__all__ = ["DataParallel", "DistributedLaunchError", "LAUNCH_COMMAND", "data_parallel_for", "init_process_group",
           "launched_by_torchrun"]
