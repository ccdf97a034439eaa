"""Data-parallel training (training.distributed: data_parallel) on torch.distributed + DDP.

The main test launches 2 CPU processes with torchrun (gloo), fine-tunes (through the example's command
line) and gradually prunes a zoo model with `unicompress.compress`, and checks every weight against the
same recipes run in one process. tiny-vit runs by default (its workers import no transformers, so the
launch stays cheap); tiny-bert is the same test, marked slow.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from unicompress_torch_testutil import task_data, tiny

import unicompress as uc
from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.backend.capabilities import Support
from unicompress.backend.types import TaskData
from unicompress.specs import FineTuneSpec, TrainingSpec
from unicompress_torch.distributed import TORCHRUN_VARIABLES, DataParallel, DistributedLaunchError
from unicompress_torch.training import train_loop

A = get_backend("torch")
ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "ddp_finetune.py"
#: the gradual pruning stage both runs apply (movement scores read DDP-averaged gradients)
PRUNING = dict(sparsity=0.5, criterion="movement",
               schedule={"kind": "polynomial", "begin_step": 0, "end_step": 4, "frequency": 2})


def _example():
    spec = importlib.util.spec_from_file_location("ddp_finetune_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pruning(distributed: str) -> uc.PruningSpec:
    return uc.PruningSpec(**PRUNING, training={"steps": 6, "learning_rate": 0.05, "optimizer": "sgd",
                                               "distributed": distributed})


WORKER = """
import os, sys
sys.path.insert(0, {examples!r})
import ddp_finetune as ex
import unicompress as uc
from unicompress.backend import get_backend
from unicompress.fileio import atomic_write_bytes

out, rank, name = {out!r}, os.environ["RANK"], {zoo!r}
# fine-tuning through the example's own command line (every rank saves, to check they agree)
assert ex.main(["--zoo", name, "--steps", "4", "--learning-rate", "0.1",
                "--save-npz", out + "/finetune.{{rank}}.npz"]) == 0
# gradual movement pruning: torch prune masks (forward pre-hooks) on a model inside DDP
model = get_backend("torch").build_model(name, seed=0)
spec = uc.PruningSpec(**{pruning!r}, training={{"steps": 6, "learning_rate": 0.05, "optimizer": "sgd",
                                               "distributed": "data_parallel"}})
result = uc.compress(model, spec, ex.synthetic_task(name), backend="torch", progress=False)
atomic_write_bytes(out + "/prune." + rank + ".npz", ex.weights_npz(result.model))
print("sparsity", rank, result.history[0]["sparsity"])
"""


def _torchrun(tmp_path: Path, zoo_name: str) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(examples=str(EXAMPLE.parent), out=str(tmp_path), pruning=PRUNING, zoo=zoo_name))
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    # --standalone: a local rendezvous on a free port (no fixed MASTER_PORT to collide with)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _max_diff(a, b) -> float:
    assert set(a.files) == set(b.files)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a.files)


@pytest.mark.parametrize("zoo_name", ["tiny-vit", pytest.param("tiny-bert", marks=pytest.mark.slow)])
def test_two_process_ddp_matches_one_process(tmp_path, zoo_name):
    out = _torchrun(tmp_path, zoo_name)
    assert out.returncode == 0, out.stderr[-4000:]
    ex = _example()
    torch.set_num_threads(1)
    initial = {k: v.detach().numpy() for k, v in A.build_model(zoo_name, seed=0).state_dict().items()}
    single_ft = ex.finetune(zoo_name, steps=4, learning_rate=0.1, optimizer="sgd", batch_size=8,
                            distributed="none")
    single_pr = uc.compress(A.build_model(zoo_name, seed=0), _pruning("none"), ex.synthetic_task(zoo_name),
                            backend="torch", progress=False)
    for stage, single in (("finetune", single_ft.model), ("prune", single_pr.model)):
        rank0, rank1 = (np.load(tmp_path / f"{stage}.{r}.npz") for r in (0, 1))
        ref = {k: v.detach().numpy() for k, v in single.state_dict().items()}
        assert _max_diff(rank0, rank1) == 0.0, stage  # every rank returns the same weights
        assert set(rank0.files) == set(ref), stage
        diff = max(float(np.abs(rank0[k] - ref[k]).max()) for k in ref)
        assert diff <= 1e-5, (stage, diff)  # measured about 1e-8: only the all-reduce summation order differs
        moved = max(float(np.abs(rank0[k] - initial[k]).max()) for k in initial)
        assert moved > 1e-3, (stage, moved)  # both trained
    pruned = np.load(tmp_path / "prune.0.npz")
    ref = single_pr.model.state_dict()
    targets = [layer.name + ".weight" for layer in A.layers(single_pr.model)
               if layer.name + ".weight" in pruned.files and (pruned[layer.name + ".weight"] == 0).mean() > 0]
    assert targets, "the pruning stage left no zeros"
    for k in targets:  # the same masks as one process, at the target sparsity
        assert (pruned[k] == 0).mean() == 0.5 and np.array_equal(pruned[k] == 0, ref[k].numpy() == 0), k
    assert f"sparsity 0 {single_pr.history[0]['sparsity']}" in out.stdout  # the same schedule points
    assert "on 2 process(es) (data_parallel)" in out.stdout  # the example's summary, printed by rank 0 only
    assert out.stdout.count("process(es)") == 1


def test_data_parallel_outside_torchrun_names_the_launch_command(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    model = A.copy(tiny()[0])
    before = A.weights(model)
    spec = FineTuneSpec(training=TrainingSpec(steps=2, distributed="data_parallel"))
    with pytest.raises(DistributedLaunchError, match=r"torchrun --nproc_per_node 2 your_script\.py") as err:
        A.apply(model, spec, task_data(), StageContext())
    assert "RANK" in str(err.value) and "distributed: none" in str(err.value)
    after = A.weights(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # refused before training


def test_shard_takes_strided_rows_and_scales_uneven_batches():
    inputs = {"input_ids": torch.arange(10).reshape(5, 2)}
    labels = torch.arange(5)
    parts = [DataParallel(r, 2, torch.device("cpu")).shard(inputs, labels) for r in (0, 1)]
    assert parts[0][1].tolist() == [0, 2, 4] and parts[1][1].tolist() == [1, 3]
    assert parts[1][0]["input_ids"].tolist() == [[2, 3], [6, 7]]
    # scale = world * n_local / n_global: the ranks' average of (scale * local mean) is the global mean
    assert [p[2] for p in parts] == pytest.approx([6 / 5, 4 / 5])
    values = labels.float()
    averaged = sum(p[2] * values[p[1]].mean() for p in parts) / 2
    assert float(averaged) == pytest.approx(float(values.mean()))
    with pytest.raises(ValueError, match="fewer than the 4"):
        DataParallel(0, 4, torch.device("cpu")).shard(inputs, labels[:3])


@pytest.fixture
def one_rank_group(monkeypatch):
    """A gloo group of one process, initialised by the caller (train_loop must reuse it, not re-init)."""
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class TwoInputs(torch.nn.Module):
    """Positional inputs whose names differ from the batch keys, an unused parameter, zeros to keep."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8)
        self.head = torch.nn.Linear(8, 3)
        self.unused = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.a.weight[:, :2] = 0

    def forward(self, x, y):
        return self.head(torch.relu(self.a(x) + self.b(y)))


def _two_input_data() -> TaskData:
    rng = np.random.default_rng(0)
    batches = [({"first": rng.normal(size=(6, 4)).astype(np.float32),
                 "second": rng.normal(size=(6, 4)).astype(np.float32)}, rng.integers(0, 3, 6)) for _ in range(3)]
    return TaskData(train=lambda: iter(batches), num_labels=3)


def _train_both(loss_fn=None, extra=None, steps=5):
    """train_loop with distributed none and data_parallel from the same start: {mode: (model, losses)}."""
    results = {}
    for mode in ("none", "data_parallel"):
        if extra is not None:
            extra.data.fill_(1.0)
        ctx = StageContext()
        spec = TrainingSpec(steps=steps, learning_rate=0.1, optimizer="sgd", distributed=mode)
        out = train_loop(TwoInputs(), _two_input_data(), spec, ctx, loss_fn=loss_fn,
                         extra_params=[extra] if extra is not None else None)
        results[mode] = (out, [v for _, v in ctx.history["loss"]], None if extra is None else float(extra))
    return results


def _assert_same(results) -> None:
    (dp_model, dp_loss, dp_extra), (ref_model, ref_loss, ref_extra) = results["data_parallel"], results["none"]
    assert np.allclose(dp_loss, ref_loss, atol=1e-6)
    for (name, p), q in zip(dp_model.named_parameters(), ref_model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert dp_extra == pytest.approx(ref_extra, abs=1e-6) if ref_extra is not None else dp_extra is None


def test_train_loop_reuses_an_existing_group_and_returns_the_plain_module(one_rank_group):
    # the default loss calls the DDP wrapper with the batch's own keys ("first", "second"): they do not
    # match forward(x, y), so they must go positionally (DDP's **kwargs must not hide the module's signature)
    results = _train_both()
    _assert_same(results)
    model, losses, _ = results["data_parallel"]
    assert type(model) is TwoInputs and not model.training
    assert losses[-1] < losses[0]
    assert (model.a.weight[:, :2] == 0).all() and not hasattr(model.a, "weight_mask")  # zeros kept, mask gone


def test_extra_params_are_averaged_and_trained_under_ddp(one_rank_group):
    extra = torch.nn.Parameter(torch.ones(()))  # trained beside the model, as distillation projections are
    seen = []

    def loss_fn(model, inputs, labels):
        seen.append(type(model).__name__)
        return torch.nn.functional.cross_entropy(model(inputs["first"], inputs["second"]) * extra, labels)

    results = _train_both(loss_fn, extra, steps=3)
    _assert_same(results)
    assert seen == ["TwoInputs"] * 3 + ["DistributedDataParallel"] * 3
    assert results["data_parallel"][2] != 1.0  # its gradient went through the all_reduce and the optimizer


def test_capability_is_claimed_natively():
    caps = A.capabilities()
    assert caps.support("finetune", "training.distributed", "data_parallel") is Support.native
    assert caps.problems(FineTuneSpec(training=TrainingSpec(distributed="data_parallel"))) == []
