"""Data-parallel training (training.distributed: data_parallel) on torch.distributed + DDP.

The main test launches 2 CPU processes with torchrun (gloo) on a worker script that fine-tunes (through the
example's command line), prunes then fine-tunes, prunes gradually and trains a model holding a range
observer, then runs the same script in this process with distributed: none and compares every weight and
buffer. tiny-vit runs by default (its workers import no transformers, so the launch stays cheap); tiny-bert
is the same test, marked slow.
"""
from __future__ import annotations

import contextlib
import io
import os
import runpy
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


WORKER = """
import os, sys
sys.path.insert(0, {examples!r})
import ddp_finetune as ex
import unicompress as uc
from torch.ao.quantization.observer import MovingAverageMinMaxObserver
from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.fileio import atomic_write_bytes
from unicompress.specs import TrainingSpec
from unicompress_torch.training import train_loop

mode, out, name = sys.argv[1:4]
rank = os.environ.get("RANK", "0")
A = get_backend("torch")
data = ex.synthetic_task(name)


def training(**kw):
    return {{"steps": 6, "learning_rate": 0.05, "optimizer": "sgd", "distributed": mode, **kw}}


def save(stage, model):
    atomic_write_bytes(f"{{out}}/{{stage}}.{{rank}}.npz", ex.weights_npz(model))


# 1. fine-tuning through the example's own command line (every rank saves, to check they agree)
assert ex.main(["--zoo", name, "--steps", "4", "--learning-rate", "0.1", "--distributed", mode,
                "--save-npz", out + "/finetune.{{rank}}.npz"]) == 0
# 2. one-shot pruning, then fine-tuning: the kept zeros are torch prune masks (forward pre-hooks) inside DDP
result = uc.compress(A.build_model(name, seed=0), [uc.PruningSpec(sparsity=0.5), uc.FineTuneSpec(training=training())],
                     data, backend="torch", progress=False)
save("prune_finetune", result.model)
# 3. gradual movement pruning: masks change while DDP trains (through the handler: the API takes
#    data_parallel for finetune only), scores from DDP-averaged gradients
ctx = StageContext()
save("gradual", A.apply(A.build_model(name, seed=0), uc.PruningSpec(**{pruning!r}, training=training()), data, ctx))
if rank == "0":  # one writer: two ranks printing at once interleave their lines
    print("sparsity", rank, ctx.history["sparsity"], flush=True)
# 4. a QAT-style range observer inside the model sees only its rank's rows: train_loop merges the ranges
model = A.build_model(name, seed=0)
model.add_module("logit_observer", MovingAverageMinMaxObserver())
model.classifier.register_forward_hook(lambda module, args, output: model.logit_observer(output))
save("observer", train_loop(model, data, TrainingSpec(**training(steps=3)), StageContext()))
"""
STAGES = ("finetune", "prune_finetune", "gradual", "observer")


def _write_worker(tmp_path: Path) -> Path:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(examples=str(EXAMPLE.parent), pruning=PRUNING))
    return script


def _torchrun(script: Path, out: Path, zoo_name: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    # --standalone: a local rendezvous on a free port (no fixed MASTER_PORT to collide with)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "data_parallel", str(out), zoo_name]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _run_here(script: Path, out: Path, zoo_name: str, monkeypatch) -> str:
    """The same worker in this process with distributed: none; returns what it printed."""
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", [str(script), "none", str(out), zoo_name])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        runpy.run_path(str(script), run_name="__main__")
    return buf.getvalue()


def _max_diff(a, b) -> float:
    assert set(a.files) == set(b.files)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a.files)


@pytest.mark.parametrize("zoo_name", ["tiny-vit", pytest.param("tiny-bert", marks=pytest.mark.slow)])
def test_two_process_ddp_matches_one_process(tmp_path, zoo_name, monkeypatch):
    script = _write_worker(tmp_path)
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    out = _torchrun(script, tmp_path / "ddp", zoo_name)
    assert out.returncode == 0, out.stderr[-4000:]
    torch.set_num_threads(1)
    printed = _run_here(script, tmp_path / "one", zoo_name, monkeypatch)
    initial = {k: v.detach().numpy() for k, v in A.build_model(zoo_name, seed=0).state_dict().items()}
    for stage in STAGES:
        rank0, rank1, one = (np.load(tmp_path / d / f"{stage}.{r}.npz") for d, r in (("ddp", 0), ("ddp", 1), ("one", 0)))
        assert _max_diff(rank0, rank1) == 0.0, stage  # every rank returns the same weights
        diff = _max_diff(rank0, one)
        assert diff <= 1e-5, (stage, diff)  # measured about 1e-8: only the all-reduce summation order differs
        moved = max(float(np.abs(rank0[k] - initial[k]).max()) for k in initial)
        assert moved > 1e-3, (stage, moved)  # both trained
        if stage in ("prune_finetune", "gradual"):  # the same masks as one process, at the target sparsity
            pruned = [k for k in rank0.files if rank0[k].ndim == 2 and (rank0[k] == 0).mean() >= 0.5]
            assert pruned, stage
            for k in pruned:
                assert np.array_equal(rank0[k] == 0, one[k] == 0), (stage, k)
    # "observer" compared its min_val/max_val too: the range the whole batch gives, not rank 0's half
    obs = np.load(tmp_path / "ddp" / "observer.0.npz")
    assert np.isfinite(obs["logit_observer.min_val"]) and obs["logit_observer.min_val"] < obs["logit_observer.max_val"]
    sparsity = [line for line in printed.splitlines() if line.startswith("sparsity")][0].split(" ", 2)[2]
    assert f"sparsity 0 {sparsity}" in out.stdout  # the same schedule points on rank 0 (logged on every rank)
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
        results[mode] = (out, [v for _, v in ctx.history["loss"]], None if extra is None else float(extra.detach()))
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
