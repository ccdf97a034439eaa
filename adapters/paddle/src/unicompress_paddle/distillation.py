"""DistillationSpec on Paddle: a frozen teacher, a student built by dropping layers, and the loss
alpha * distillation + (1 - alpha) * task, trained with plain Paddle steps.

Losses: response = T^2 * KL(teacher || student) on softened logits and feature 'mse' use PaddleSlim's
dygraph distillation losses (`paddleslim.dygraph.dist.losses`: KLLoss, MSELoss; the same modules the
`paddleslim.dygraph.dist.Distill` wrapper combines, which also works on Paddle 3 - see the tests);
feature 'cosine' and relation (MiniLM: attention-distribution and value-relation KL) have no PaddleSlim
loss and are computed with Paddle ops.
"""
from __future__ import annotations

import copy
import math
from typing import Any

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import DistillationSpec, DistillKind, FeatureLoss

from . import compat
from .compat import paddle
from .models import SelfAttention, encoder_blocks
from .training import train

F = paddle.nn.functional


def drop_layers(model: Any, keep: list[int]) -> Any:
    """The model with only the kept Transformer blocks (a copy; weights shared by value)."""
    student = copy.deepcopy(model)
    blocks = encoder_blocks(student)
    kept = [blocks[i] for i in keep]
    owner = (student.bert if student.zoo_family == "bert" else student.vit).encoder
    owner.layer = paddle.nn.LayerList(kept)
    student.config = type(student.config)(**{**student.config.to_dict(), "num_hidden_layers": len(kept)})
    return student


def _set_record(model: Any, on: bool) -> list[Any]:
    atts = [l for l in model.sublayers() if isinstance(l, SelfAttention)]
    for a in atts:
        a.record = on
    return atts


def _kl_rows(p_teacher, p_student):
    """Mean over rows of KL(p_t || p_s) for probability rows on the last axis."""
    eps = 1e-12
    return (p_teacher * (paddle.log(p_teacher + eps) - paddle.log(p_student + eps))).sum(-1).mean()


def _value_relation(v):
    d = v.shape[-1]
    return F.softmax(paddle.matmul(v, v, transpose_y=True) / math.sqrt(d), axis=-1)


def distill(model: Any, spec: DistillationSpec, data: TaskData, ctx: StageContext) -> Any:
    """DistillationSpec handler: returns the trained student."""
    compat.paddleslim()
    from paddleslim.dygraph.dist.losses.basic_loss import KLLoss, MSELoss

    teacher = ctx.teacher if ctx.teacher is not None else copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.stop_gradient = True
    n_teacher = len(encoder_blocks(teacher))
    keep = spec.student.layers_to_keep(n_teacher) if spec.student is not None else None  # the core's rule
    student = drop_layers(model, keep) if keep is not None else model
    n_student = len(encoder_blocks(student))
    pairs = spec.resolved_layer_map(n_student, n_teacher)  # one layer map for every backend (the core's)
    if {DistillKind.feature, DistillKind.relation} & set(spec.kinds):
        for si, ti in pairs:  # logged so the conformance suite sees the pairs the losses use
            ctx.log("layer_map", si, ti)
    kinds = set(spec.kinds)
    if DistillKind.feature in kinds and student.config.hidden_size != teacher.config.hidden_size:
        raise NotImplementedError("feature distillation between different widths (projection) is not supported yet")
    T, alpha = spec.temperature, spec.alpha
    kl, mse = KLLoss(act="softmax", reduction="mean"), MSELoss()
    t_atts = _set_record(teacher, DistillKind.relation in kinds)
    s_atts = _set_record(student, DistillKind.relation in kinds)

    def extra(tensors, labels, s_logits):
        with paddle.no_grad():
            t_out = teacher.features(*tensors)
        loss = paddle.zeros([])
        if DistillKind.response in kinds:
            # PaddleSlim's KLLoss averages over B*C elements; * C gives the batch mean, * T^2 the usual scale
            loss = loss + kl(s_logits / T, t_out["logits"] / T) * (T * T * s_logits.shape[-1])
        if DistillKind.feature in kinds:
            s_hidden = student_hidden[0]
            for s, t in pairs:
                hs, ht = s_hidden[s + 1], t_out["hidden_states"][t + 1]
                f = mse(hs, ht) if spec.feature_loss is FeatureLoss.mse else \
                    (1 - F.cosine_similarity(hs, ht, axis=-1)).mean()
                loss = loss + f * spec.feature_weight / len(pairs)
        if DistillKind.relation in kinds:
            for s, t in pairs:
                sa, ta = s_atts[s], t_atts[t]
                r = _kl_rows(ta.last_probs, sa.last_probs) + \
                    _kl_rows(_value_relation(ta.last_values), _value_relation(sa.last_values))
                loss = loss + r * spec.relation_weight / len(pairs)
        return loss * alpha

    student_hidden: list[Any] = [None]

    def forward(*tensors):
        out = student.features(*tensors)
        student_hidden[0] = out["hidden_states"]
        return out["logits"]

    train(student, data, spec.training, ctx, extra_loss=extra, task_weight=1.0 - alpha, forward=forward)
    _set_record(student, False)
    _set_record(teacher, False)
    return student
