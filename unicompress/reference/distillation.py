"""What a distillation loss means, in numpy: the loss of the first training step, which every backend must log.

For a batch (inputs, labels), a teacher T and a student S (zoo BERT forward: `unicompress.zoo.reference`):

    loss = alpha * (response + feature + relation) + (1 - alpha) * CE(S logits, labels)
    response = t^2 * mean over rows of KL(softmax(T/t) || softmax(S/t))                 (t: temperature)
    feature  = feature_weight * mean over the layer map's pairs (s, u) of the mean over real tokens
               (attention_mask 1) of the per-token error: mse = mean over hidden of (h_s - h_u)^2,
               cosine = 1 - cos(h_s, h_u)
    relation = relation_weight * mean over pairs of [KL(A_u || A_s) + KL(V_u || V_s)], each KL averaged over heads
               and real query rows; A = softmax(q k^T / sqrt(d)), V = softmax(v v^T / sqrt(d)), padded keys masked.

Blocks are numbered from 0; h_s is block s's output. Example::

    loss = first_step_loss(spec, teacher_weights, student_weights, config, inputs, labels)
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..specs.distillation import DistillationSpec, DistillKind, FeatureLoss


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _masked_mean(err: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the real positions of err [B, L] (or [B, heads, L] with mask [B, L])."""
    w = np.broadcast_to(mask[:, None, :] if err.ndim == 3 else mask, err.shape).astype(np.float64)
    return float((err * w).sum() / max(w.sum(), 1.0))


def _kl_rows(log_t: np.ndarray, log_s: np.ndarray) -> np.ndarray:
    return (np.exp(log_t) * (log_t - log_s)).sum(-1)


def _relation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    scores = a @ b.transpose(0, 1, 3, 2) / math.sqrt(a.shape[-1]) + ((1.0 - mask) * -1e9)[:, None, None, :]
    return _log_softmax(scores)


def first_step_loss(spec: DistillationSpec, teacher: dict[str, Any], student: dict[str, Any],
                    mask: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The spec's loss on one batch from the two models' features (`zoo.reference.bert_features`): the terms
    and ``total``. The layer map is the spec's resolved one for the two models' block counts."""
    mask = np.asarray(mask, np.float64)
    terms: dict[str, float] = {}
    layer_map = spec.resolved_layer_map(len(student["hidden"]), len(teacher["hidden"]))
    if DistillKind.response in spec.kinds:
        t = spec.temperature
        terms["response"] = t * t * float(_kl_rows(_log_softmax(teacher["logits"] / t),
                                                   _log_softmax(student["logits"] / t)).mean())
    if DistillKind.feature in spec.kinds:
        errs = []
        for s, u in layer_map:
            hs, hu = student["hidden"][s], teacher["hidden"][u]
            if spec.feature_loss is FeatureLoss.mse:
                err = ((hs - hu) ** 2).mean(-1)
            else:
                cos = (hs * hu).sum(-1) / (np.linalg.norm(hs, axis=-1) * np.linalg.norm(hu, axis=-1))
                err = 1.0 - cos
            errs.append(_masked_mean(err, mask))
        terms["feature"] = spec.feature_weight * float(np.mean(errs))
    if DistillKind.relation in spec.kinds:
        rels = []
        for s, u in layer_map:
            a, b = student["attention"][s], teacher["attention"][u]
            attn = _kl_rows(_relation(b["q"], b["k"], mask), _relation(a["q"], a["k"], mask))
            value = _kl_rows(_relation(b["v"], b["v"], mask), _relation(a["v"], a["v"], mask))
            rels.append(_masked_mean(attn, mask) + _masked_mean(value, mask))
        terms["relation"] = spec.relation_weight * float(np.mean(rels))
    log_p = _log_softmax(student["logits"])
    task = float(-log_p[np.arange(len(labels)), np.asarray(labels)].mean())
    terms["task"] = task
    terms["total"] = spec.alpha * sum(v for k, v in terms.items() if k != "task") + (1.0 - spec.alpha) * task
    return terms


__all__ = ["first_step_loss"]
