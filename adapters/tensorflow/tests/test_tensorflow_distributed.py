"""Data-parallel training (training.distributed: data_parallel) on tf.distribute.MultiWorkerMirroredStrategy.

The main test (slow) starts 2 worker processes on localhost ports, each with its TF_CONFIG, on a worker
script that fine-tunes (through the example's command line), prunes then fine-tunes, prunes gradually,
runs QAT and distils, then runs the same script in one process with distributed: none and compares every
weight (tf_keras get_weights order: kernels, quantizer ranges, pruning state). The default run keeps the
fast paths: the launch error, sharding, a one-worker launch equal to plain training, the claim.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.backend.capabilities import Support
from unicompress.backend.types import TaskData
from unicompress.specs import FineTuneSpec, QuantizationSpec, TrainingSpec

A = get_backend("tensorflow")
ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "tf_distributed_finetune.py"
PRUNING = dict(sparsity=0.5, schedule={"kind": "polynomial", "begin_step": 0, "end_step": 4, "frequency": 2})
LAUNCH_VARIABLES = ("TF_CONFIG", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                    "MASTER_PORT")

WORKER = """
import os, sys
sys.path.insert(0, {examples!r})
import tf_distributed_finetune as ex
import unicompress as uc
from ddp_finetune import synthetic_task
from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.fileio import atomic_write_bytes
from unicompress_tensorflow.distributed import worker_rank

# no strategy() call of our own: the backend creates the strategy when it first loads TensorFlow (TF_CONFIG set)
mode, out, name = sys.argv[1:4]
rank = str(worker_rank())
A = get_backend("tensorflow")
data = synthetic_task(name)


def training(**kw):
    return {{"steps": 6, "learning_rate": 0.05, "optimizer": "sgd", "distributed": mode, **kw}}


def save(stage, model):
    atomic_write_bytes(f"{{out}}/{{stage}}.{{rank}}.npz", ex.weights_npz(model))


def compress(stages):
    return uc.compress(A.build_model(name, seed=0), stages, data, backend="tensorflow", progress=False).model


# 1. one-shot pruning, then fine-tuning that keeps the zeros
save("prune_finetune", compress([uc.PruningSpec(sparsity=0.5), uc.FineTuneSpec(training=training())]))
# 2. gradual pruning: TFMOT's wrappers update their masks inside the (data-parallel) training steps
ctx = StageContext()
save("gradual", A.apply(A.build_model(name, seed=0), uc.PruningSpec(**{pruning!r}, training=training()), data, ctx))
if rank == "0":
    print("sparsity", ctx.history["sparsity"], flush=True)
# 3. QAT: moving-average activation ranges see one worker's rows; the loop merges them every step
save("qat", compress([uc.QuantizationSpec(mode="qat", training=training(steps=3, learning_rate=0.01))]))
# 4. distillation into a 1-layer student cut from the model (the teacher is the model itself)
save("distill", compress([uc.DistillationSpec(kinds=["response", "feature"], alpha=0.7, student={{"num_layers": 1}},
                                              training=training(steps=4))]))
# 5. fine-tuning through the example's own command line (every worker saves, to check they agree)
assert ex.main(["--zoo", name, "--steps", "4", "--learning-rate", "0.1", "--distributed", mode,
                "--save-npz", out + "/finetune.{{rank}}.npz"]) == 0
"""
STAGES = ("finetune", "prune_finetune", "gradual", "qat", "distill")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", HF_HUB_OFFLINE="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    return env


def _write_worker(tmp_path: Path) -> Path:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(examples=str(EXAMPLE.parent), pruning=PRUNING))
    return script


def _launch(script: Path, out: Path, zoo_name: str, workers: int = 2) -> list[subprocess.CompletedProcess]:
    """Start `workers` processes, each with its TF_CONFIG (free localhost ports), and wait for all."""
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        from tf_distributed_finetune import worker_configs
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    procs = [subprocess.Popen([sys.executable, str(script), "data_parallel", str(out), zoo_name],
                              env=dict(_env(), TF_CONFIG=config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for config in worker_configs(workers)]
    done = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done


def _max_diff(a, b) -> float:
    assert a.files == b.files
    return max(float(np.abs(a[k] - b[k]).max()) for k in a.files)


@pytest.mark.slow
def test_two_workers_match_one_process(tmp_path):
    script = _write_worker(tmp_path)
    for d in ("dp", "one"):
        (tmp_path / d).mkdir()
    workers = _launch(script, tmp_path / "dp", "tiny-bert")
    for w in workers:
        assert w.returncode == 0, w.stderr[-4000:]
    one = subprocess.run([sys.executable, str(script), "none", str(tmp_path / "one"), "tiny-bert"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-4000:]
    initial = A.build_model("tiny-bert", seed=0).get_weights()
    diffs = {}
    for stage in STAGES:
        rank0, rank1, single = (np.load(tmp_path / d / f"{stage}.{r}.npz") for d, r in (("dp", 0), ("dp", 1),
                                                                                         ("one", 0)))
        assert _max_diff(rank0, rank1) == 0.0, stage  # every worker returns the same weights
        diffs[stage] = _max_diff(rank0, single)
        if stage in ("finetune", "prune_finetune", "gradual"):
            moved = max(float(np.abs(rank0[f"arr_{i}"] - w).max()) for i, w in enumerate(initial))
            assert moved > 1e-3, (stage, moved)  # it trained
        if stage in ("prune_finetune", "gradual"):  # the same masks as one process, at the target sparsity
            pruned = [k for k in rank0.files if rank0[k].ndim == 2 and (rank0[k] == 0).mean() >= 0.5]
            assert pruned, stage
            for k in pruned:
                assert np.array_equal(rank0[k] == 0, single[k] == 0), (stage, k)
    # measured: about 4e-9 (only the summation order of the all-reduce differs)
    assert all(d <= 1e-5 for d in diffs.values()), diffs
    printed = [line for line in one.stdout.splitlines() if line.startswith("sparsity")]
    assert printed and printed[0] in workers[0].stdout  # the same schedule points and sparsities
    assert "on 2 worker(s) (data_parallel)" in workers[0].stdout  # the example's summary, worker 0 only
    assert "worker(s)" not in workers[1].stdout


def _task_data() -> TaskData:
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        ids = rng.integers(0, 100, (6, 8)).astype(np.int64)
        batches.append(({"input_ids": ids, "attention_mask": np.ones_like(ids)}, ids.sum(1) % 2))
    return TaskData(train=lambda: iter(batches), num_labels=2)


@pytest.fixture
def no_launch(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_data_parallel_without_tf_config_names_the_launch_command(no_launch):
    from unicompress_tensorflow.distributed import DistributedLaunchError

    model = A.build_model("tiny-bert", seed=0, num_labels=2)
    before = A.weights(model)
    spec = FineTuneSpec(training=TrainingSpec(steps=2, distributed="data_parallel"))
    with pytest.raises(DistributedLaunchError, match=r"TF_CONFIG=.*python your_script\.py") as err:
        A.apply(model, spec, _task_data(), StageContext())
    assert "distributed: none" in str(err.value)
    after = A.weights(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # refused before training


def test_more_workers_without_tf_config_ask_for_it(no_launch, monkeypatch):
    from unicompress_tensorflow.distributed import DistributedLaunchError, strategy

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(DistributedLaunchError, match="WORLD_SIZE=2: TensorFlow needs every worker's address"):
        strategy()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(DistributedLaunchError, match="TF_CONFIG is not JSON"):
        strategy()


LATE = """
import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
tf.constant(1.0) + 1  # an op of the script's own before the strategy exists
from unicompress_tensorflow.distributed import DistributedLaunchError, strategy
try:
    strategy()
except DistributedLaunchError as err:
    print("REFUSED", err)
"""


@pytest.mark.slow
def test_strategy_after_the_first_op_is_refused_with_the_fix(tmp_path):
    """TF 2.21: 'Collective ops must be configured at program startup'; we say what to call, and when."""
    script = tmp_path / "late.py"
    script.write_text(LATE)
    config = json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}})
    out = subprocess.run([sys.executable, str(script)], env=dict(_env(), TF_CONFIG=config), capture_output=True,
                         text=True, timeout=120)
    assert "REFUSED TensorFlow ran an op before the MultiWorkerMirroredStrategy was created" in out.stdout, out.stderr
    assert "unicompress_tensorflow.distributed.strategy()" in out.stdout


def test_shard_takes_strided_rows():
    from unicompress_tensorflow.distributed import DataParallel

    inputs = {"input_ids": np.arange(10).reshape(5, 2)}
    labels = np.arange(5)
    parts = [DataParallel(None, r, 2).shard(inputs, labels) for r in (0, 1)]
    assert parts[0][1].tolist() == [0, 2, 4] and parts[1][1].tolist() == [1, 3]
    assert parts[1][0]["input_ids"].tolist() == [[2, 3], [6, 7]]
    with pytest.raises(ValueError, match="fewer than the 4"):
        DataParallel(None, 0, 4).shard(inputs, labels[:3])


def test_one_worker_launch_equals_plain_training(no_launch, monkeypatch):
    """The conformance suite's launch (the torchrun variables of one worker, no TF_CONFIG): a local strategy
    whose all-reduce over one worker leaves the step exactly the single-process one."""
    from unicompress_tensorflow import training

    results = {}
    for mode in ("none", "data_parallel"):
        if mode == "data_parallel":
            monkeypatch.setenv("WORLD_SIZE", "1")
            monkeypatch.setenv("RANK", "0")
        model = A.build_model("tiny-bert", seed=0, num_labels=2)
        ctx = StageContext()
        training.train(model, _task_data(), TrainingSpec(steps=3, learning_rate=0.05, optimizer="sgd",
                                                         batch_size=4, distributed=mode), ctx)
        results[mode] = (model.get_weights(), [v for _, v in ctx.history["loss"]])
    (w_dp, l_dp), (w_one, l_one) = results["data_parallel"], results["none"]
    assert l_dp == pytest.approx(l_one, abs=1e-6) and l_one[-1] != l_one[0]
    assert max(float(np.abs(a - b).max()) for a, b in zip(w_dp, w_one)) <= 1e-6


@pytest.mark.slow
def test_merge_ranges_picks_tfmot_range_variables():
    """Only TFMOT's *_min / *_max range variables are merged (min of minima, max of maxima)."""
    from unicompress_tensorflow import distributed

    qm = A.apply(A.build_model("tiny-bert", seed=0, num_labels=2), QuantizationSpec(mode="qat", training={"steps": 1}),
                 _task_data(), StageContext())
    names = [v.name for v in qm.variables if distributed._RANGE.search(v.name)]
    assert any("_min" in n for n in names) and any("_max" in n for n in names)
    assert len(names) % 2 == 0 and not any(distributed._RANGE.search(v.name) for v in qm.trainable_variables)
    assert not any(distributed._RANGE.search(v.name) for v in A.build_model("tiny-bert").variables)


def test_step_is_traced_once_per_stage(no_launch):
    from unicompress_tensorflow import training

    model = A.build_model("tiny-bert", seed=0, num_labels=2)
    spec = TrainingSpec(steps=5, learning_rate=0.01, batch_size=4)
    optimizer = training.make_optimizer(spec)
    optimizer.build(model.trainable_variables)
    step = training.compiled_step(model, training.task_loss, model.trainable_variables, optimizer)
    stream = training.batches(_task_data(), 4)
    for _ in range(5):
        x, y = next(stream)
        step(training.to_tensors(model, x), training.tf.constant(y, training.tf.int64), training.tf.constant(1.0))
    assert step.experimental_get_tracing_count() == 1


def test_capability_is_claimed_natively():
    caps = A.capabilities()
    assert caps.support("finetune", "training.distributed", "data_parallel") is Support.native
    assert caps.problems(FineTuneSpec(training=TrainingSpec(distributed="data_parallel"))) == []
    assert json.loads(json.dumps(caps.notes))["finetune"].count("MultiWorkerMirroredStrategy") == 1
