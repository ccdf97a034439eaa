"""Distillation in the torch adapter: a frozen teacher, a student cut from it, the losses of the spec.

The teacher is tiny-bert (or tiny-vit) trained for a few steps on a synthetic rule so its predictions depend
on the input; the student keeps one of its two layers. Each test checks numbers: the teacher's tensors are
bit-for-bit unchanged, the logged loss falls, argmax agreement with the teacher rises.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from unicompress_torch_testutil import encoder_model, tiny  # noqa: E402

import torch  # noqa: E402

from unicompress import zoo  # noqa: E402
from unicompress.backend.adapter import StageContext  # noqa: E402
from unicompress.backend.capabilities import Capabilities, Support, build_table  # noqa: E402
from unicompress.backend.types import TaskData  # noqa: E402
from unicompress.specs import DistillationSpec, TrainingSpec  # noqa: E402
from unicompress_torch import distillation as D  # noqa: E402
from unicompress_torch.capabilities_qd import DISTILLATION_ROWS  # noqa: E402
from unicompress_torch.training import forward_logits, to_torch_inputs, train_loop  # noqa: E402


def _inputs(name: str, seed: int, batch: int) -> dict:
    cfg = zoo.config_for(name)
    if name == "tiny-vit":
        return zoo.inputs_for(name, cfg, batch=batch, seed=seed)
    return zoo.inputs_for(name, cfg, batch=batch, length=16, seed=seed)


def _rule(name: str, x: dict) -> np.ndarray:
    if name == "tiny-vit":
        px = np.asarray(x["pixel_values"])
        return (px[:, :14].mean(axis=(1, 2)) > px[:, 14:].mean(axis=(1, 2))).astype(np.int64)
    return (np.asarray(x["input_ids"])[:, 1] % 3).astype(np.int64)


_TEACHERS: dict[str, torch.nn.Module] = {}


def trained_teacher(name: str = "tiny-bert") -> torch.nn.Module:
    """A teacher whose predictions depend on the input (trained 60 steps on a fixed rule); cached."""
    if name not in _TEACHERS:
        model, _, _ = tiny(name)
        batches = [_inputs(name, s, 16) for s in range(8)]
        data = TaskData(train=lambda: ((x, _rule(name, x)) for x in batches))
        train_loop(model, data, TrainingSpec(steps=60, learning_rate=3e-3, seed=0), StageContext())
        _TEACHERS[name] = model.eval()
    return copy.deepcopy(_TEACHERS[name])


def distill_data(teacher: torch.nn.Module, name: str = "tiny-bert") -> TaskData:
    """Transfer set labelled by the teacher's argmax (the task loss then also points at the teacher)."""
    batches = [_inputs(name, 200 + s, 16) for s in range(8)]
    with torch.no_grad():
        labels = [forward_logits(teacher, to_torch_inputs(x)).argmax(-1).numpy() for x in batches]
    return TaskData(train=lambda: iter(zip(batches, labels)), num_labels=3)


def eval_batches(name: str = "tiny-bert") -> list[dict]:
    return [_inputs(name, 500 + s, 32) for s in range(3)]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run(kinds, name="tiny-bert", steps=50, **kw):
    teacher = trained_teacher(name)
    before = _state(teacher)
    spec = DistillationSpec(kinds=kinds, temperature=2.0, alpha=kw.pop("alpha", 0.9),
                            student=kw.pop("student", {"keep_layers": [0]}),
                            training={"steps": steps, "learning_rate": 3e-3, "batch_size": 16}, **kw)
    ctx = StageContext(teacher=teacher)
    bars = []
    ctx.progress = lambda desc, total: bars.append((desc, total)) or _Bar()
    data = distill_data(teacher, name)
    cut = D.keep_layers(copy.deepcopy(teacher), spec.student.keep_layers) if spec.student and \
        spec.student.keep_layers else None
    student = D.apply_distillation(copy.deepcopy(teacher), spec, data, ctx)
    return teacher, before, student, cut, ctx, bars


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, n=1):
        self.n += n

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


KINDS = [["response"], ["feature"], ["relation"], ["response", "feature", "relation"]]


@pytest.mark.parametrize("kinds", KINDS, ids=lambda k: "+".join(k))
def test_distillation_teacher_frozen_loss_falls_agreement_rises(kinds):
    teacher, before, student, cut, ctx, bars = _run(kinds)
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit for bit
    assert len(student.bert.encoder.layer) == 1 and student.config.num_hidden_layers == 1
    losses = [v for _, v in ctx.history["loss"]]
    assert len(losses) == 50 and bars == [("train", 50)]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    a0 = D.agreement(cut, teacher, eval_batches())
    a1 = D.agreement(student, teacher, eval_batches())
    assert a1 > a0 + 0.03, (a0, a1)


def test_student_keeps_the_requested_layers_and_their_weights():
    teacher = trained_teacher()
    student = D.keep_layers(copy.deepcopy(teacher), [1])
    assert len(student.bert.encoder.layer) == 1
    for k, v in student.bert.encoder.layer[0].state_dict().items():
        assert torch.equal(v, teacher.bert.encoder.layer[1].state_dict()[k])
    with pytest.raises(ValueError, match="out of range"):
        D.keep_layers(copy.deepcopy(teacher), [0, 2])


def test_num_layers_student_and_response_on_vit():
    teacher, before, student, _, ctx, _ = _run(["response"], name="tiny-vit", student={"num_layers": 1}, steps=30)
    assert len(student.vit.encoder.layer) == 1 and student.config.num_hidden_layers == 1
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    losses = [v for _, v in ctx.history["loss"]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_feature_and_relation_on_vit():
    teacher, before, student, _, ctx, _ = _run(["feature", "relation"], name="tiny-vit", student={"num_layers": 1},
                                               steps=30)
    assert len(student.vit.encoder.layer) == 1
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    losses = [v for _, v in ctx.history["loss"]]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_response_loss_is_temperature_scaled_kl():
    teacher = trained_teacher()
    spec = DistillationSpec(kinds=["response"], temperature=4.0, alpha=1.0, training={"steps": 1})
    loss = D.DistillationLoss(teacher, teacher, spec, [])
    student = D.keep_layers(copy.deepcopy(teacher), [0])
    x = to_torch_inputs(_inputs("tiny-bert", 3, 8))
    y = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        t, s = forward_logits(teacher, x), forward_logits(student, x)
        pt, ps = torch.softmax(t / 4, -1), torch.softmax(s / 4, -1)
        want = 16 * (pt * (pt.log() - ps.log())).sum(-1).mean()
        got = loss(student, x, y)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    with torch.no_grad():
        same = float(loss(teacher, x, y))
    assert same == pytest.approx(0.0, abs=1e-6)  # student == teacher: no distillation loss
    loss.remove()


def test_feature_projection_when_widths_differ():
    """A narrower student (hidden 16) learns a Linear projection to the teacher's width 32."""
    from transformers import BertForSequenceClassification

    from unicompress_torch.models import hf_bert_config

    teacher = trained_teacher()
    cfg = zoo.config_for("tiny-bert")
    small = zoo.bert.BertConfig(**{**cfg.to_dict(), "hidden_size": 16, "intermediate_size": 32,
                                   "num_attention_heads": 4, "num_hidden_layers": 1})
    torch.manual_seed(0)
    student = BertForSequenceClassification(hf_bert_config(small)).eval()
    spec = DistillationSpec(kinds=["feature"], feature_loss="mse", layer_map=[(0, 1)], alpha=1.0,
                            training={"steps": 40, "learning_rate": 3e-3, "batch_size": 16})
    ctx = StageContext(teacher=teacher)
    out = D.apply_distillation(student, spec, distill_data(teacher), ctx)
    losses = [v for _, v in ctx.history["loss"]]
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])
    assert out.config.hidden_size == 16
    no_proj = DistillationSpec(kinds=["feature"], layer_map=[(0, 1)], projection=False, training={"steps": 1})
    with pytest.raises(ValueError, match="projection"):
        D.apply_distillation(copy.deepcopy(student), no_proj, distill_data(teacher), StageContext(teacher=teacher))


def test_num_layers_keeps_the_layers_the_core_names():
    """student: {num_layers: 1} keeps the teacher's last layer (StudentSpec.layers_to_keep)."""
    teacher = trained_teacher()
    spec = DistillationSpec(kinds=["response"], student={"num_layers": 1}, training={"steps": 1, "learning_rate": 1e-9})
    student = D.apply_distillation(copy.deepcopy(teacher), spec, distill_data(teacher), StageContext(teacher=teacher))
    kept = spec.student.layers_to_keep(2)
    assert kept == [1] and len(student.bert.encoder.layer) == 1
    for k, v in student.bert.encoder.layer[0].state_dict().items():
        assert torch.allclose(v, teacher.bert.encoder.layer[1].state_dict()[k], atol=1e-6)


def test_distillation_needs_a_teacher():
    model, _, _ = tiny()
    with pytest.raises(ValueError, match="teacher"):
        D.apply_distillation(model, DistillationSpec(training={"steps": 1}), None, StageContext())


def test_layers_of_transformer_encoder_can_be_dropped():
    model = encoder_model(layers=2)
    D.keep_layers(model, [1])
    assert len(model.encoder.layers) == 1 and model.encoder.num_layers == 1
    assert model(torch.randn(2, 4, 16)).shape == (2, 3)


def _dspec(field: str, value: str) -> DistillationSpec:
    base = {"training": {"steps": 40, "learning_rate": 3e-3, "batch_size": 16}, "alpha": 0.9}
    if field == "kinds":
        return DistillationSpec(kinds=[value], student={"keep_layers": [0]}, **base)
    if field == "feature_loss":
        return DistillationSpec(kinds=["feature"], feature_loss=value, student={"keep_layers": [0]}, **base)
    if field == "student":
        return DistillationSpec(kinds=["response"], student={"num_layers": 1}, **base)
    raise AssertionError(field)


CLAIMED = [(f, str(v)) for t, f, vals, s in DISTILLATION_ROWS for v in vals if s is not Support.unsupported]


@pytest.mark.parametrize("field,value", CLAIMED, ids=[f"{f}={v}" for f, v in CLAIMED])
def test_every_claimed_distillation_value_works(field, value):
    spec = _dspec(field, value)
    caps = Capabilities("torch", build_table(DISTILLATION_ROWS))
    assert caps.problems(spec) == []
    assert (field, value) in {(f, str(v)) for f, v in spec.capability_items()}
    teacher = trained_teacher()
    ctx = StageContext(teacher=teacher)
    D.apply_distillation(copy.deepcopy(teacher), spec, distill_data(teacher), ctx)
    losses = [v for _, v in ctx.history["loss"]]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
