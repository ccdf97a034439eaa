"""Data-parallel training (training.distributed: data_parallel) on paddle.distributed + paddle.DataParallel.

The main test launches 2 CPU worker processes with ``python -m paddle.distributed.launch`` (gloo) on a
worker script that fine-tunes (through the example's command line), prunes then fine-tunes, trains with
QAT, distils, prunes gradually, and trains a parameter that lives outside the model; the same script then runs as one
plain process with distributed: none, and every weight is compared. The default run keeps the cheap
tests (launch error, sharding, one-worker launch, observer merging); the launches are marked slow.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from unicompress_paddle.compat import paddle

from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.backend.capabilities import Support
from unicompress.backend.types import TaskData
from unicompress.specs import FineTuneSpec, QuantizationSpec, TrainingSpec
from unicompress_paddle.distributed import (GENERIC_VARIABLES, PADDLE_VARIABLES, DataParallel,
                                            DistributedLaunchError, _quanter_state,
                                            global_range_forward)

A = get_backend("paddle")
ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "paddle_distributed_finetune.py"

WORKER = """
import io, os, sys
sys.path.insert(0, {examples!r})
import numpy as np
import paddle_distributed_finetune as ex
from ddp_finetune import synthetic_task
import unicompress as uc
from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.fileio import atomic_write_bytes
from unicompress.specs import TrainingSpec
from unicompress_paddle.compat import paddle
from unicompress_paddle.quantization import _converted_linears, activation_scale
from unicompress_paddle.training import train

mode, out, name = sys.argv[1:4]
rank = os.environ.get("PADDLE_TRAINER_ID", "0")
A = get_backend("paddle")
data = synthetic_task(name)


def training(**kw):
    return {{"steps": 4, "learning_rate": 0.05, "optimizer": "sgd", "distributed": mode, **kw}}


def save(stage, model):
    atomic_write_bytes(f"{{out}}/{{stage}}.{{rank}}.npz", ex.weights_npz(model))


# 1. fine-tuning through the example's own command line (every rank saves, to check they agree)
assert ex.main(["--zoo", name, "--steps", "4", "--learning-rate", "0.1", "--distributed", mode,
                "--save-npz", out + "/finetune.{{rank}}.npz"]) == 0
# 2. one-shot pruning, then fine-tuning with AdamW: the pruned zeros stay zero on every rank
result = uc.compress(A.build_model(name, seed=0),
                     [uc.PruningSpec(sparsity=0.5), uc.FineTuneSpec(training=training(optimizer="adamw",
                                                                                      learning_rate=1e-3))],
                     data, backend="paddle", progress=False)
save("prune_finetune", result.model)
# 3. QAT (paddle.quantization + PaddleSlim quanters): activation ranges of the global batch on every rank
qat = A.apply(A.build_model(name, seed=0), uc.QuantizationSpec(mode="qat", bits=8, training=training()), data,
              StageContext())
save("qat", qat)
ranges = {{f"{{n}}.act_scale": np.float32(activation_scale(l)) for n, l in _converted_linears(qat).items()}}
ranges.update({{f"{{n}}.{{f}}": getattr(t, f) for n, t in A.quantized_weights(qat).items() for f in ("q", "scale")}})
buf = io.BytesIO()
np.savez(buf, **ranges)
atomic_write_bytes(f"{{out}}/qat_ranges.{{rank}}.npz", buf.getvalue())
# 4. distillation (response + feature) from a teacher: the forward is the student's `features`
ctx = StageContext(teacher=A.build_model(name, seed=0))
save("distill", A.apply(A.build_model(name, seed=1), uc.DistillationSpec(
    kinds=["response", "feature"], alpha=0.7, temperature=2.0, training=training()), data, ctx))
# 5. gradual pruning: PaddleSlim's pruner updates masks between data-parallel steps (on_step)
save("gradual", A.apply(A.build_model(name, seed=0), uc.PruningSpec(
    sparsity=0.5, schedule={{"kind": "polynomial", "begin_step": 0, "end_step": 4, "frequency": 2}},
    training=training()), data, StageContext()))
# 6. a parameter trained beside the model (as distillation projections are): its gradient is averaged
model = A.build_model(name, seed=0)
gain = paddle.create_parameter([1], "float32", default_initializer=paddle.nn.initializer.Constant(1.0))
train(model, data, TrainingSpec(**training(steps=3)), StageContext(),
      extra_loss=lambda tensors, labels, logits: ((logits * gain) ** 2).mean() * 0.1,
      parameters=[*model.parameters(), gain])
model.add_parameter("extra_gain", gain)
save("extra", model)
"""
STAGES = ("finetune", "prune_finetune", "qat", "qat_ranges", "distill", "gradual", "extra")


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_") and k not in GENERIC_VARIABLES}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def _run_workers(tmp_path: Path, zoo_name: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(examples=str(EXAMPLE.parent)))
    for d in ("dp", "one"):
        (tmp_path / d).mkdir()
    launch = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
              "--log_dir", str(tmp_path / "log"), str(script), "data_parallel", str(tmp_path / "dp"), zoo_name]
    dp = subprocess.run(launch, env=_clean_env(), capture_output=True, text=True, timeout=300)
    one = subprocess.run([sys.executable, str(script), "none", str(tmp_path / "one"), zoo_name],
                         env=_clean_env(), capture_output=True, text=True, timeout=300)
    return dp, one


def _worker_log(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted((tmp_path / "log").glob("workerlog.*")))


def _max_diff(a, b, skip: str = "\0") -> float:
    assert set(a.files) == set(b.files)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a.files if skip not in k)


@pytest.mark.slow
@pytest.mark.parametrize("zoo_name", ["tiny-bert", "tiny-vit"])
def test_two_worker_launch_matches_one_process(tmp_path, zoo_name):
    dp, one = _run_workers(tmp_path, zoo_name)
    assert dp.returncode == 0, dp.stdout[-2000:] + _worker_log(tmp_path)
    assert one.returncode == 0, one.stderr[-4000:]
    initial = {k: v.numpy() for k, v in A.build_model(zoo_name, seed=0).state_dict().items()}
    for stage in STAGES:
        rank0, rank1, single = (np.load(tmp_path / d / f"{stage}.{r}.npz") for d, r in
                                (("dp", 0), ("dp", 1), ("one", 0)))
        assert _max_diff(rank0, rank1) == 0.0, stage  # every rank returns the same weights
        # attention key biases get no gradient in exact arithmetic (softmax ignores a shift shared by all
        # keys), only rounding noise, which AdamW normalises into steps of up to lr: compared apart
        diff = _max_diff(rank0, single, skip="attention.self.key.bias" if stage == "prune_finetune" else "\0")
        # measured (tiny-bert): 4e-9 finetune/qat/extra, 2e-8 distill, 9e-8 prune + AdamW: only the order of
        # the all-reduce sums differs; QAT's integer weights and activation ranges match too
        assert diff <= 1e-6, (stage, diff)
        if stage == "qat_ranges":
            assert all(np.array_equal(rank0[k], single[k]) for k in rank0.files if k.endswith(".q"))
            continue
        shared = [k for k in initial if k in rank0.files and rank0[k].shape == initial[k].shape]
        if stage != "distill":  # the student starts from another seed
            assert max(float(np.abs(rank0[k] - initial[k]).max()) for k in shared) > 1e-3, stage  # it trained
        if stage == "prune_finetune":  # key biases within 4 AdamW steps of lr 1e-3
            assert _max_diff(rank0, single) <= 4 * 1e-3 + 1e-6
        if stage in ("prune_finetune", "gradual"):  # the same pruned zeros as one process
            pruned = [k for k in rank0.files if rank0[k].ndim == 2 and (rank0[k] == 0).mean() >= 0.5]
            assert pruned
            for k in pruned:
                assert np.array_equal(rank0[k] == 0, single[k] == 0), k
    extra = np.load(tmp_path / "dp" / "extra.0.npz")["extra_gain"]
    assert extra[0] != 1.0 and extra[0] == pytest.approx(np.load(tmp_path / "one" / "extra.0.npz")["extra_gain"][0])
    ranges = np.load(tmp_path / "dp" / "qat_ranges.0.npz")
    assert sum(k.endswith(".act_scale") for k in ranges.files) >= 4  # activation ranges were compared above
    assert "on 2 process(es) (data_parallel)" in dp.stdout  # the example's summary on rank 0 (shown by the launcher)


def test_data_parallel_without_the_launcher_names_the_launch_command(monkeypatch):
    for name in (*PADDLE_VARIABLES, *GENERIC_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    model = A.build_model("tiny-bert", seed=0)
    before = A.weights(model)
    data = _data()
    with pytest.raises(DistributedLaunchError, match=r"python -m paddle\.distributed\.launch --nproc_per_node 2"):
        A.apply(model, FineTuneSpec(training=TrainingSpec(steps=2, distributed="data_parallel")), data,
                StageContext())
    after = A.weights(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # refused before training


def test_several_workers_from_another_launcher_are_refused(monkeypatch):
    """torchrun's variables for 2 workers: Paddle's init_parallel_env cannot use them (it asks for
    PADDLE_TRAINER_ENDPOINTS), so the adapter names Paddle's launcher instead of failing inside Paddle."""
    for name in PADDLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29999")):
        monkeypatch.setenv(k, v)
    with pytest.raises(DistributedLaunchError,
                       match=r"2 workers needs Paddle's launcher(.|\n)*paddle\.distributed\.launch"):
        A.apply(A.build_model("tiny-vit", seed=0), FineTuneSpec(training=TrainingSpec(
            steps=1, distributed="data_parallel")), _data(), StageContext())
    assert not paddle.distributed.is_initialized()


def test_example_without_the_launcher_exits_with_the_command(tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "1"], env=_clean_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "python -m paddle.distributed.launch --nproc_per_node 2" in out.stderr
    assert "distributed: none" in out.stderr


def test_shard_takes_strided_rows_and_scales_uneven_batches():
    inputs = {"input_ids": np.arange(10).reshape(5, 2)}
    labels = np.arange(5)
    parts = [DataParallel(r, 2).shard(inputs, labels) for r in (0, 1)]
    assert parts[0][1].tolist() == [0, 2, 4] and parts[1][1].tolist() == [1, 3]
    assert parts[1][0]["input_ids"].tolist() == [[2, 3], [6, 7]]
    assert [p[2] for p in parts] == pytest.approx([6 / 5, 4 / 5])
    averaged = sum(p[2] * labels[p[1]].mean() for p in parts) / 2  # what the gradient average sees
    assert averaged == pytest.approx(labels.mean())
    with pytest.raises(ValueError, match="fewer than the 4"):
        DataParallel(0, 4).shard(inputs, labels[:3])


def _data() -> TaskData:
    from unicompress import zoo

    cfg = zoo.config_for("tiny-bert")
    batches = []
    for b in range(3):
        x = zoo.inputs_for("tiny-bert", cfg, batch=6, length=8, seed=b)
        batches.append((x, (np.asarray(x["input_ids"]).sum(1) % cfg.num_labels).astype(np.int64)))
    return TaskData(train=lambda: iter(batches), num_labels=cfg.num_labels)


def test_one_worker_launch_trains_like_one_process(monkeypatch):
    """A generic one-worker launch (RANK=0, WORLD_SIZE=1, MASTER_*: what the conformance suite sets)
    trains in this process, with no collective, exactly like distributed: none."""
    for name in PADDLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29999")):
        monkeypatch.setenv(k, v)
    out = {}
    for mode in ("none", "data_parallel"):
        ctx = StageContext()
        model = A.apply(A.build_model("tiny-bert", seed=0), FineTuneSpec(training=TrainingSpec(
            steps=3, learning_rate=0.1, optimizer="sgd", distributed=mode)), _data(), ctx)
        out[mode] = (A.weights(model), [v for _, v in ctx.history["loss"]])
    assert out["none"][1] == out["data_parallel"][1] and out["none"][1][-1] < out["none"][1][0]
    assert all(np.array_equal(out["none"][0][k], out["data_parallel"][0][k]) for k in out["none"][0])
    assert not paddle.distributed.is_initialized()  # one worker: no process group was made


def _qat_model():
    from paddle.quantization import QAT
    from unicompress_paddle.quantization import _config

    q = A.build_model("tiny-bert", seed=0)
    cfg, chosen = _config(q, QuantizationSpec(mode="qat", bits=8, granularity="per_tensor",
                                              training=TrainingSpec(steps=1)))
    q.train()
    return QAT(cfg).quantize(q, inplace=True), chosen


def _state(model) -> np.ndarray:
    return np.concatenate([t.numpy().ravel() for t in _quanter_state(model)])


def test_quanters_use_the_global_batch_range_inside_the_forward():
    """Two simulated ranks, each on its rows: with plain Paddle quanters their ranges (and so every later
    layer's input) drift from one process on the whole batch; `global_range_forward` (the rank's abs-max
    replaced by the global one, as the all_reduce MAX gives it) makes states and logits equal again."""
    (whole, chosen), plain = _qat_model(), [_qat_model()[0] for _ in range(2)]
    assert len(_quanter_state(whole)) == 4 * len(chosen)  # activation + weight quanter per Linear: accum, scale
    inputs, _ = next(iter(_data().train()))
    ids, mask = (paddle.to_tensor(inputs[k]) for k in ("input_ids", "attention_mask"))
    quanters = lambda m: [q for q in m.sublayers() if isinstance(getattr(q, "_accum", None), paddle.Tensor)]
    seen: list[float] = []

    def record(value):  # one process: the whole batch's abs-max, in call order
        seen.append(float(value.numpy()[0]))
        return value

    for q in quanters(whole):
        object.__setattr__(q, "forward", global_range_forward(q, record))
    full_logits = whole(ids, mask).numpy()
    for r, model in enumerate(plain):
        model(ids[r::2], mask[r::2])
    assert not np.allclose(np.maximum(_state(plain[0]), _state(plain[1])), _state(whole), rtol=1e-6, atol=0)

    synced = [_qat_model()[0] for _ in range(2)]
    for r, model in enumerate(synced):
        calls = iter(seen)
        for q in quanters(model):
            object.__setattr__(q, "forward", global_range_forward(
                q, lambda v, calls=calls: paddle.full([1], next(calls), v.dtype)))
        logits = model(ids[r::2], mask[r::2])
        np.testing.assert_allclose(logits.numpy(), full_logits[r::2], rtol=0, atol=1e-5)
        np.testing.assert_allclose(_state(model), _state(whole), rtol=1e-6, atol=0)
    # the appended element leaves the gradient alone (straight-through): same as the native forward
    native, patched = _qat_model()[0], _qat_model()[0]
    for q in quanters(patched):
        object.__setattr__(q, "forward", global_range_forward(q, lambda v: v))
    grads = []
    for m in (native, patched):
        m(ids, mask).sum().backward()
        grads.append(m.classifier.weight.grad.numpy().copy() if hasattr(m.classifier, "weight")
                     else next(p for p in m.parameters() if p.grad is not None).grad.numpy().copy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-7)


def test_leaf_gradient_refuses_in_place_scale_but_takes_set_value():
    """Paddle 3.3.1 breakage behind `average_gradients`: a parameter's `.grad` cannot be scaled in place
    (scale_ raises), but all_reduce writes into it and `set_value` replaces its data."""
    layer = paddle.nn.Linear(3, 2)
    layer(paddle.ones([4, 3])).sum().backward()
    grad = layer.weight.grad
    before = grad.numpy().copy()
    with pytest.raises(ValueError, match="can't use inplace strategy"):
        grad.scale_(0.5)
    # ... after it had already halved the data: a caller catching the error would scale twice
    np.testing.assert_array_equal(layer.weight.grad.numpy(), before / 2)
    grad.set_value(grad / 2)
    np.testing.assert_array_equal(layer.weight.grad.numpy(), before / 4)  # the parameter's own gradient changed


def test_capability_is_claimed_natively():
    caps = A.capabilities()
    assert caps.support("finetune", "training.distributed", "data_parallel") is Support.native
    assert caps.problems(FineTuneSpec(training=TrainingSpec(distributed="data_parallel"))) == []
    # QAT and distillation train through the same loop: the core's plan check lets them name data_parallel too
    from unicompress.api import as_recipe, check_plan

    recipe = as_recipe({"name": "r", "backend": "paddle", "stages": [
        {"technique": "quantization", "mode": "qat", "training": {"distributed": "data_parallel"}}]})
    check_plan(A, A.build_model("tiny-vit", seed=0), recipe, _data())
