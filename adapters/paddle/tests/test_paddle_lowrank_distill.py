"""Low-rank factorisation and distillation (frozen teacher, student by dropping layers) on Paddle."""
import copy

import numpy as np
import pytest

import paddle
from unicompress import reference as R
from unicompress import zoo
from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import DistillationSpec, FineTuneSpec, LowRankSpec, PruningSpec
from unicompress_paddle.backend import PaddleAdapter

A = PaddleAdapter()
CFG = zoo.config_for("tiny-bert")
X = zoo.inputs_for("tiny-bert", CFG)
FFN = "bert.encoder.layer.0.intermediate.dense"


def task_data(n=3):
    rng = np.random.default_rng(0)
    return TaskData(train=lambda: ((zoo.inputs_for("tiny-bert", CFG, batch=4, length=8, seed=i),
                                    rng.integers(0, 3, 4).astype(np.int64)) for i in range(n)), num_labels=3)


def test_low_rank_rank_reaches_the_eckart_young_error():
    m = A.build_model("tiny-bert")
    w = A.weights(m)[FFN]
    f = A.apply(A.copy(m), LowRankSpec(rank=4))
    names = {i.name for i in A.layers(f)}
    assert FFN + ".first" in names and FFN + ".second" in names and FFN not in names
    ws = A.weights(f, [FFN + ".first", FFN + ".second"])
    assert ws[FFN + ".first"].shape == (4, 32) and ws[FFN + ".second"].shape == (64, 4)
    approx = ws[FFN + ".second"] @ ws[FFN + ".first"]
    assert abs(np.linalg.norm(approx - w) - R.optimal_error(w, 4)) < 1e-5
    assert f.bert.encoder.layer[0].attention.self.query.rank == 4


def test_low_rank_by_energy_and_skips_layers_that_would_grow():
    m = A.build_model("tiny-bert")
    w = A.weights(m)[FFN]
    ctx = StageContext()
    f = A.apply(A.copy(m), LowRankSpec(energy=0.5), ctx=ctx)
    r = R.rank_for_energy(np.linalg.svd(w, compute_uv=False), 0.5)
    assert A.weights(f, [FFN + ".first"])[FFN + ".first"].shape[0] == r
    f2 = A.apply(A.copy(m), LowRankSpec(rank=30))  # 30 * (32 + 64) > 32 * 64: no saving, left alone
    assert FFN in {i.name for i in A.layers(f2)}
    assert len(A.export_onnx(f, __import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "lr.onnx", X).read_bytes()) > 0


@pytest.mark.parametrize("kinds,feature_loss", [(["response"], "mse"), (["feature", "relation"], "cosine"),
                                                (["response", "feature"], "mse")])
def test_distillation_builds_a_student_and_keeps_the_teacher_frozen(kinds, feature_loss):
    teacher = A.build_model("tiny-bert")
    before = A.weights(teacher)
    ctx = StageContext(teacher=teacher)
    spec = DistillationSpec(kinds=kinds, feature_loss=feature_loss, student={"num_layers": 1}, alpha=0.7,
                            temperature=2.0, training={"steps": 3, "learning_rate": 1e-3})
    student = A.apply(A.copy(teacher), spec, task_data(), ctx)
    assert A.structure(student).num_layers == 1 and len(ctx.history["loss"]) == 3
    assert all(np.array_equal(before[k], v) for k, v in A.weights(teacher).items())  # frozen
    assert A.run(student, X).shape == (4, 3)
    # the student started from teacher layer 1 (num_layers=1 keeps the last) and was trained
    w = A.weights(student)
    assert not np.array_equal(w["bert.encoder.layer.0.output.dense"], before["bert.encoder.layer.0.output.dense"])


def test_paddleslim_distill_wrapper_gives_our_response_plus_feature_loss():
    """paddleslim.dygraph.dist.Distill works on Paddle 3: its combined loss is KL * T^2 + the MSE of every element.
    (Ours is the same response term; its feature term leaves padded tokens out, see test_paddle_user_distillation.)"""
    from unicompress_paddle.compat import paddleslim
    paddleslim()
    from paddleslim.dygraph.dist import Distill
    import paddle.nn.functional as F
    t = A.build_model("tiny-bert")
    s = copy.deepcopy(t)
    s.train()
    T = 2.0
    cfg = [{"layers": [
        {"layers_name": ["classifier", "classifier"], "loss_function": "KLLoss", "temperature": T, "weight": T * T * 3},
        {"layers_name": ["bert.encoder.layer.0", "bert.encoder.layer.1"], "loss_function": "MSELoss", "weight": 1.0}]}]
    d = Distill(cfg, s, t, convert_fn=False)
    ids, mask = paddle.to_tensor(X["input_ids"]), paddle.to_tensor(X["attention_mask"])
    loss, _, _ = d(ids, mask)
    fs, ft = s.features(ids, mask), t.features(ids, mask)
    want = F.kl_div(F.log_softmax(fs["logits"] / T, -1), F.softmax(ft["logits"] / T, -1), reduction="batchmean") \
        * T * T + F.mse_loss(fs["hidden_states"][1], ft["hidden_states"][2])
    assert abs(float(loss) - float(want)) < 1e-6 + 1e-3 * abs(float(want))


def test_finetune_keeps_pruned_weights_zero():
    m = A.build_model("tiny-bert")
    p = A.apply(A.copy(m), PruningSpec(sparsity=0.5))
    zeros = {n: (w == 0) for n, w in A.weights(p).items() if "encoder" in n}
    f = A.apply(p, FineTuneSpec(training={"steps": 3, "learning_rate": 1e-2}), task_data())
    after = A.weights(f)
    assert all((after[n][z] == 0).all() for n, z in zeros.items())
    assert not np.array_equal(after["classifier"], A.weights(m)["classifier"])


POISONED_LOW_RANK = f"""
import numpy as np
from unicompress.api import compress
from unicompress.specs import LowRankSpec
from unicompress_paddle.backend import PaddleAdapter

A = PaddleAdapter()
model = A.build_model("tiny-bert")
w = A.weights(model, ["{FFN}"])["{FFN}"]
w[3, 5] = np.inf
A.set_weights(model, {{"{FFN}": w}})
try:
    compress(model, LowRankSpec(energy=0.9), backend="paddle", progress=False)
except Exception as exc:
    print("COMPRESS", type(exc).__name__, exc, flush=True)
A.apply(model, LowRankSpec(rank=4, force=True))  # a direct call plans too: must raise, not reach LAPACK
print("FACTORISED", flush=True)
"""


def test_inf_weights_are_refused_before_lapack_and_the_process_fails():
    """Issue 13 item 2: paddle.linalg.svd on inf ended the process with exit code 0 (`DLASCL parameter 4`)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", POISONED_LOW_RANK], capture_output=True, text=True, timeout=240)
    both = out.stdout + out.stderr
    assert out.returncode == 1, both[-2000:]
    assert "FACTORISED" not in out.stdout and "DLASCL" not in both
    assert "COMPRESS NonFiniteWeightsError stages[0]: 1 selected layer(s) hold NaN or inf weights" in out.stdout
    assert f"{FFN} (0 NaN, 1 inf of 2048)" in out.stdout
    assert "unicompress.errors.NonFiniteWeightsError: stages[0]" in out.stderr and FFN in out.stderr.splitlines()[-1]
