"""DistillationSpec on Paddle: a frozen teacher, a student built by dropping layers, and the loss
alpha * distillation + (1 - alpha) * task, trained with plain Paddle steps.

The blocks are the model's one LayerList of attention blocks (`models.block_list`: the zoo's encoder, an
`nn.TransformerEncoder`'s layers); hidden states come from the zoo's `features` or from forward post-hooks on
those blocks (`features`); the student is a copy with only the kept blocks in that LayerList.

Losses: response = T^2 * KL(teacher || student) on softened logits uses PaddleSlim's dygraph distillation
loss (`paddleslim.dygraph.dist.losses.KLLoss`, the module the `paddleslim.dygraph.dist.Distill` wrapper combines,
which also works on Paddle 3 - see the tests). Feature losses (mse, cosine) are per-token errors averaged over the
real tokens (attention_mask 1; PaddleSlim's MSELoss would average padding in) and over the layer-map pairs, as on
every backend; relation (MiniLM: attention-distribution and value-relation KL) has no PaddleSlim loss either.
Teacher and student with different tokenizers: the core's data carries the teacher's own ids of the same rows
(``data.extra["teacher_data"]``, batches with ``teacher_*`` keys; `unicompress.data.teacher`); the loop hands
the student's and the teacher's tensors and each model reads its own.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Optional

from unicompress.backend.adapter import StageContext
from unicompress.errors import StructureError
from unicompress.backend.types import TaskData
from unicompress.data.teacher import TEACHER_PREFIX, distillation_data
from unicompress.specs import DistillationSpec, DistillKind, FeatureLoss

from . import compat
from .compat import paddle
from .layers import structure as discover_structure
from .models import SelfAttention, block_list, encoder_blocks
from .training import train

F = paddle.nn.functional


def drop_layers(model: Any, keep: list[int]) -> Any:
    """The model with only the kept Transformer blocks (a copy; weights shared by value)."""
    student = copy.deepcopy(model)
    if getattr(student, "zoo_family", None) is not None:
        owner, attr, blocks = (student.bert if student.zoo_family == "bert" else student.vit).encoder, "layer", \
            encoder_blocks(student)
    else:
        owner, attr, blocks = block_list(student)
    if not keep or any(not 0 <= i < len(blocks) for i in keep):
        raise StructureError(f"keep_layers {keep} does not fit the model's {len(blocks)} block(s)")
    kept = [blocks[i] for i in keep]
    setattr(owner, attr, paddle.nn.LayerList(kept))
    if hasattr(owner, "num_layers"):  # nn.TransformerEncoder/Decoder keep their depth
        owner.num_layers = len(kept)
    if getattr(student, "config", None) is not None and hasattr(student.config, "num_hidden_layers"):
        student.config = type(student.config)(**{**student.config.to_dict(), "num_hidden_layers": len(kept)})
    return student


def features(model: Any, *tensors: Any) -> dict:
    """Logits plus the hidden state before the first block and after every block (`hidden_states`).

    A zoo model computes them itself (`features`); any other model runs its forward with a post-hook on each
    block of its `block_list` (a block returning (output, cache) contributes its output)."""
    if getattr(model, "zoo_family", None) is not None:
        return model.features(*tensors)
    blocks = encoder_blocks(model)
    hidden: list[Any] = [None] * (len(blocks) + 1)

    def tap(i: int):
        def hook(layer, inputs, output):
            if i == 0:
                hidden[0] = inputs[0]
            hidden[i + 1] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    handles = [block.register_forward_post_hook(tap(i)) for i, block in enumerate(blocks)]
    try:
        logits = model(*tensors)
    finally:
        for h in handles:
            h.remove()
    return {"logits": logits, "hidden_states": hidden}


def _width(model: Any, st: Optional[Any] = None) -> Optional[int]:
    """The hidden width: the zoo config's, else the structure's (the stage's, or discovered)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "hidden_size"):
        return int(config.hidden_size)
    st = st if st is not None else discover_structure(model)
    return st.hidden_size if st is not None else None


def _require_relation(model: Any, pairs: list, side: str) -> list[Any]:
    """The zoo SelfAttention of every block (relation distillation records their probabilities and values);
    StructureError before training when a block the layer map names has none."""
    blocks = encoder_blocks(model)
    atts = [next((s for s in b.sublayers() if isinstance(s, SelfAttention)), None) for b in blocks]
    need = sorted({p[0 if side == "student" else 1] for p in pairs})
    missing = [i for i in need if atts[i] is None]
    if missing:
        raise StructureError(
            f"relation distillation records attention probabilities and values of unicompress' SelfAttention; the "
            f"{side}'s blocks {missing} ({type(blocks[missing[0]]).__name__}) have none (Paddle's "
            "nn.MultiHeadAttention does not expose them): use kinds response/feature on this model")
    return atts


def _set_record(model: Any, on: bool) -> list[Any]:
    atts = [l for l in model.sublayers() if isinstance(l, SelfAttention)]
    for a in atts:
        a.record = on
    return atts


def _token_mean(err: Any, mask: Any) -> Any:
    """The mean of a per-token error [batch, tokens] over the real tokens (attention_mask 1)."""
    if mask is None or len(mask.shape) != 2 or list(mask.shape) != list(err.shape):
        return err.mean()
    m = mask.astype(err.dtype)
    return (err * m).sum() / paddle.clip(m.sum(), min=1.0)


def _kl_rows(p_teacher, p_student, mask=None):
    """Mean of KL(p_t || p_s) over probability rows [B, heads, L, L]: over the heads and the real query rows
    (mask [B, L]; padding rows left out, as on every backend)."""
    eps = 1e-12
    kl = (p_teacher * (paddle.log(p_teacher + eps) - paddle.log(p_student + eps))).sum(-1)
    if mask is None or len(kl.shape) != 3:
        return kl.mean()
    w = paddle.expand(mask.astype(kl.dtype).unsqueeze(1), kl.shape)
    return (kl * w).sum() / paddle.clip(w.sum(), min=1.0)


def _value_relation(v, mask=None):
    """softmax(v v^T / sqrt(d)) over the real keys (mask [B, L]), like the attention distribution itself."""
    d = v.shape[-1]
    scores = paddle.matmul(v, v, transpose_y=True) / math.sqrt(d)
    if mask is not None:
        scores = scores + ((1.0 - mask.astype(scores.dtype)) * -1e9).unsqueeze(1).unsqueeze(1)
    return F.softmax(scores, axis=-1)


@contextlib.contextmanager
def _reads(model: Any, names: tuple[str, ...]):
    """While training, the loop converts the batch keys `names` (the student's and, with teacher inputs, the
    teacher's) to tensors: it reads the model's ``input_names``."""
    had = "input_names" in model.__dict__
    old = model.__dict__.get("input_names")
    object.__setattr__(model, "input_names", names)
    try:
        yield
    finally:
        if had:
            object.__setattr__(model, "input_names", old)
        else:
            del model.__dict__["input_names"]


def distill(model: Any, spec: DistillationSpec, data: TaskData, ctx: StageContext) -> Any:
    """DistillationSpec handler: returns the trained student."""
    compat.paddleslim()
    from paddleslim.dygraph.dist.losses.basic_loss import KLLoss

    teacher = ctx.teacher if ctx.teacher is not None else copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.stop_gradient = True
    kinds = set(spec.kinds)
    layered = bool({DistillKind.feature, DistillKind.relation} & kinds)
    pairs: list = []
    student = model
    if layered or spec.student is not None:  # the blocks are found (or refused) before any training
        n_teacher = len(encoder_blocks(teacher))
        keep = spec.student.layers_to_keep(n_teacher) if spec.student is not None else None  # the core's rule
        student = drop_layers(model, keep) if keep is not None else model
        n_student = len(encoder_blocks(student))
        pairs = spec.resolved_layer_map(n_student, n_teacher)  # one layer map for every backend (the core's)
    if layered:
        for si, ti in pairs:  # logged so the conformance suite sees the pairs the losses use
            ctx.log("layer_map", si, ti)
    st = ctx.plan.structure if ctx.plan is not None else None
    if DistillKind.feature in kinds and _width(student, st) != _width(teacher):
        raise NotImplementedError("feature distillation between different widths (projection) is not supported yet")
    if DistillKind.relation in kinds:
        _require_relation(student, pairs, "student")
        _require_relation(teacher, pairs, "teacher")
    T, alpha = spec.temperature, spec.alpha
    kl = KLLoss(act="softmax", reduction="mean")
    t_atts = _set_record(teacher, DistillKind.relation in kinds)
    s_atts = _set_record(student, DistillKind.relation in kinds)

    batches = distillation_data(data)  # with teacher inputs (``teacher_*``) when the tokenizers differ
    s_names = tuple(getattr(student, "input_names", ("input_ids", "attention_mask")))
    t_names = tuple(TEACHER_PREFIX + n for n in getattr(teacher, "input_names", s_names)) \
        if batches is not data else ()

    def split(tensors):
        """(student tensors, teacher tensors): the loop hands both, in `s_names + t_names` order."""
        if not t_names:
            return tensors, tensors
        if len(tensors) != len(s_names) + len(t_names):
            raise ValueError(f"distillation with teacher inputs needs every one of {s_names + t_names} in each "
                             f"batch, got {len(tensors)} tensors")
        return tensors[:len(s_names)], tensors[len(s_names):]

    def extra(tensors, labels, s_logits):
        with paddle.no_grad():
            t_out = features(teacher, *split(tensors)[1])
        loss = paddle.zeros([])
        s_tensors = split(tensors)[0]
        mask = s_tensors[s_names.index("attention_mask")] if "attention_mask" in s_names else None
        if DistillKind.response in kinds:
            # PaddleSlim's KLLoss averages over B*C elements; * C gives the batch mean, * T^2 the usual scale
            loss = loss + kl(s_logits / T, t_out["logits"] / T) * (T * T * s_logits.shape[-1])
        if DistillKind.feature in kinds:
            s_hidden = student_hidden[0]
            for s, t in pairs:
                hs, ht = s_hidden[s + 1], t_out["hidden_states"][t + 1]
                err = ((hs - ht) ** 2).mean(-1) if spec.feature_loss is FeatureLoss.mse else \
                    1 - F.cosine_similarity(hs, ht, axis=-1)
                loss = loss + _token_mean(err, mask) * spec.feature_weight / len(pairs)
        if DistillKind.relation in kinds:
            for s, t in pairs:
                sa, ta = s_atts[s], t_atts[t]
                r = _kl_rows(ta.last_probs, sa.last_probs, mask) + \
                    _kl_rows(_value_relation(ta.last_values, mask), _value_relation(sa.last_values, mask), mask)
                loss = loss + r * spec.relation_weight / len(pairs)
        return loss * alpha

    student_hidden: list[Any] = [None]

    def forward(*tensors):
        out = features(student, *split(tensors)[0])
        student_hidden[0] = out["hidden_states"]
        return out["logits"]

    with _reads(student, s_names + t_names):
        train(student, batches, spec.training, ctx, extra_loss=extra, task_weight=1.0 - alpha, forward=forward)
    _set_record(student, False)
    _set_record(teacher, False)
    return student
