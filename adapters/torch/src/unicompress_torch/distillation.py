"""DistillationSpec handler of the torch adapter: a student learns from a frozen teacher.

Losses (``loss = alpha * distillation + (1 - alpha) * cross-entropy``, distillation = the sum of the kinds):
  - response: ``T^2 * KL(softmax(t / T) || softmax(s / T))`` on the logits (Hinton et al.);
  - feature: MSE or ``1 - cosine`` between the outputs of mapped Transformer blocks (pairs from
    `DistillationSpec.resolved_layer_map`), through a learned
    `nn.Linear` projection (student width -> teacher width) when the widths differ;
  - relation (MiniLM): per mapped block, KL between the teacher's and the student's self-attention
    distributions ``softmax(Q K^T / sqrt(d) + mask)`` and between their value relations
    ``softmax(V V^T / sqrt(d))``, per head, averaged over heads and non-padded query positions.
Teacher and student with different tokenizers: the core's data carries the teacher's own ids of the same rows
(``data.extra["teacher_data"]``, batches with ``teacher_*`` keys; `unicompress.data.teacher`); the handler
trains on those batches and each model reads its own ids (`split_teacher_inputs`). The core refuses before
work what cannot be resolved (no teacher inputs, feature/relation losses across tokenizers).
Block outputs, Q, K and V are read with forward hooks on the named modules (``*.encoder.layer.<i>`` and its
``attention.self.{query,key,value}``), so HF BERT and the zoo ViT work alike. The teacher runs under
`torch.no_grad` in eval mode: its weights are never touched. Training is the shared `train_loop`
(progress bar, ``ctx.log("loss", ...)``); projections are trained alongside the student.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.data.teacher import distillation_data, split_teacher_inputs
from unicompress.specs import DistillationSpec, DistillKind, FeatureLoss

from .training import forward_logits, train_loop


# ---- blocks: where the Transformer layers are ------------------------------------------------------------
def block_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(owner, attribute, ModuleList) of the model's Transformer blocks.

    Knows HF BERT-style ``*.encoder.layer`` (the zoo BERT and ViT) and ``nn.TransformerEncoder.layers``.
    """
    for name, module in model.named_modules():
        layer = getattr(module, "layer", None)
        if name.endswith("encoder") and isinstance(layer, nn.ModuleList) and len(layer):
            return module, "layer", layer
        if isinstance(module, nn.TransformerEncoder):
            return module, "layers", module.layers
    raise ValueError(f"cannot find the Transformer blocks of a {type(model).__name__} "
                     "(expected an `encoder.layer` ModuleList or an nn.TransformerEncoder)")


def block_names(model: nn.Module) -> list[str]:
    """Module names of the blocks, in order (e.g. ``bert.encoder.layer.0``)."""
    owner, attr, blocks = block_list(model)
    prefix = next(n for n, m in model.named_modules() if m is owner)
    return [f"{prefix}.{attr}.{i}" if prefix else f"{attr}.{i}" for i in range(len(blocks))]


def keep_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """Drop every Transformer block of `model` (in place) except those at `keep`, and fix its config."""
    owner, attr, blocks = block_list(model)
    bad = [i for i in keep if i >= len(blocks)]
    if bad:
        raise ValueError(f"student.keep_layers {bad} out of range: the model has {len(blocks)} layers")
    setattr(owner, attr, nn.ModuleList([blocks[i] for i in keep]))
    if isinstance(owner, nn.TransformerEncoder):
        owner.num_layers = len(keep)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "num_hidden_layers"):
        if dataclasses.is_dataclass(cfg):  # the zoo ViT config is a frozen dataclass
            model.config = dataclasses.replace(cfg, num_hidden_layers=len(keep))
        else:
            cfg.num_hidden_layers = len(keep)
    for i, block in enumerate(getattr(owner, attr)):  # HF attention modules carry their layer index (caches)
        for sub in block.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = i
    return model


# ---- capture: block outputs and Q/K/V through hooks ----------------------------------------------------------
class Capture:
    """Forward hooks that record block outputs and (for relation) query/key/value projections."""

    def __init__(self, model: nn.Module, blocks: list[int], qkv: bool):
        self.outputs: dict[int, torch.Tensor] = {}
        self.qkv: dict[tuple[int, str], torch.Tensor] = {}
        self.heads: dict[int, int] = {}
        self._handles = []
        _, _, modules = block_list(model)
        for i in blocks:
            block = modules[i]
            self._handles.append(block.register_forward_hook(self._block_hook(i)))
            if qkv:
                sa = _self_attention(block)
                self.heads[i] = int(sa.num_attention_heads)
                for part in ("query", "key", "value"):
                    self._handles.append(getattr(sa, part).register_forward_hook(self._qkv_hook(i, part)))

    def _block_hook(self, i: int):
        def hook(_module, _inputs, output):
            self.outputs[i] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def _qkv_hook(self, i: int, part: str):
        def hook(_module, _inputs, output):
            self.qkv[(i, part)] = output
        return hook

    def clear(self) -> None:
        self.outputs.clear()
        self.qkv.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _self_attention(block: nn.Module) -> nn.Module:
    sa = getattr(getattr(block, "attention", None), "self", None)
    if sa is None or not all(hasattr(sa, p) for p in ("query", "key", "value")):
        raise ValueError("relation distillation needs blocks with attention.self.{query,key,value} Linears")
    return sa


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, width = x.shape
    return x.view(b, n, heads, width // heads).transpose(1, 2)  # [B, h, L, d]


def _log_relation(a: torch.Tensor, b: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """log softmax(a b^T / sqrt(d) + mask) over the last axis, [B, h, L, L]."""
    scores = a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def _relation_kl(log_t: torch.Tensor, log_s: torch.Tensor, query_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """KL(teacher || student) per row, averaged over heads and valid query positions."""
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # [B, h, L]
    if query_mask is None:
        return kl.mean()
    w = query_mask[:, None, :].to(kl.dtype).expand_as(kl)
    return (kl * w).sum() / w.sum().clamp_min(1.0)


# ---- the loss -----------------------------------------------------------------------------------------------
class DistillationLoss:
    """Computes the spec's loss for one batch; owns the hooks and the feature projections."""

    def __init__(self, student: nn.Module, teacher: nn.Module, spec: DistillationSpec,
                 layer_map: list[tuple[int, int]]):
        self.student, self.teacher, self.spec, self.layer_map = student, teacher, spec, layer_map
        kinds = set(spec.kinds)
        need_blocks = bool(kinds & {DistillKind.feature, DistillKind.relation})
        s_blocks = sorted({s for s, _ in layer_map}) if need_blocks else []
        t_blocks = sorted({t for _, t in layer_map}) if need_blocks else []
        relation = DistillKind.relation in kinds
        self.s_cap = Capture(student, s_blocks, relation)
        self.t_cap = Capture(teacher, t_blocks, relation)
        self.projections = nn.ModuleDict()
        if DistillKind.feature in kinds:
            self._build_projections(student, teacher)
        if relation:
            for s, t in layer_map:
                if self.s_cap.heads[s] != self.t_cap.heads[t]:
                    raise ValueError(f"relation distillation maps student layer {s} ({self.s_cap.heads[s]} heads) "
                                     f"to teacher layer {t} ({self.t_cap.heads[t]} heads): head counts must match")
        self.last: dict[str, float] = {}

    def _build_projections(self, student: nn.Module, teacher: nn.Module) -> None:
        widths = {}
        for who, model in (("s", student), ("t", teacher)):
            out = [m.out_features for n, m in model.named_modules() if isinstance(m, nn.Linear)
                   and n.endswith(("output.dense", "linear2"))]
            if not out:
                raise ValueError("feature distillation: cannot find the blocks' output width")
            widths[who] = out[-1]
        if widths["s"] != widths["t"]:
            if not self.spec.projection:
                raise ValueError(f"feature distillation: student width {widths['s']} != teacher width "
                                 f"{widths['t']}; set projection: true")
            torch.manual_seed(self.spec.training.seed)
            for s, _ in self.layer_map:
                self.projections[str(s)] = nn.Linear(widths["s"], widths["t"])

    def parameters(self) -> list[torch.Tensor]:
        return list(self.projections.parameters())

    def __call__(self, model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        self.s_cap.clear()
        self.t_cap.clear()
        inputs, t_inputs = split_teacher_inputs(inputs)  # the teacher's own token ids when its tokenizer differs
        with torch.no_grad():
            t_logits = forward_logits(self.teacher, t_inputs)
        s_logits = forward_logits(model, inputs)
        spec, parts = self.spec, {}
        mask = inputs.get("attention_mask")
        mask = mask.bool() if mask is not None else None
        if DistillKind.response in spec.kinds:
            temp = spec.temperature
            parts["response"] = F.kl_div(F.log_softmax(s_logits / temp, -1), F.log_softmax(t_logits / temp, -1),
                                         reduction="batchmean", log_target=True) * temp ** 2
        if DistillKind.feature in spec.kinds:
            terms = []
            for s, t in self.layer_map:
                hs, ht = self.s_cap.outputs[s], self.t_cap.outputs[t]
                if str(s) in self.projections:
                    hs = self.projections[str(s)](hs)
                if spec.feature_loss is FeatureLoss.mse:
                    err = ((hs - ht) ** 2).mean(-1)
                else:
                    err = 1.0 - F.cosine_similarity(hs, ht, dim=-1)
                terms.append(_masked_mean(err, mask))
            parts["feature"] = spec.feature_weight * torch.stack(terms).mean()
        if DistillKind.relation in spec.kinds:
            terms = []
            for s, t in self.layer_map:
                hs, ht = self.s_cap.heads[s], self.t_cap.heads[t]
                sq, sk, sv = (_split_heads(self.s_cap.qkv[(s, p)], hs) for p in ("query", "key", "value"))
                tq, tk, tv = (_split_heads(self.t_cap.qkv[(t, p)], ht) for p in ("query", "key", "value"))
                attn = _relation_kl(_log_relation(tq, tk, mask), _log_relation(sq, sk, mask), mask)
                value = _relation_kl(_log_relation(tv, tv, mask), _log_relation(sv, sv, mask), mask)
                terms.append(attn + value)
            parts["relation"] = spec.relation_weight * torch.stack(terms).mean()
        distill = torch.stack(list(parts.values())).sum()
        task = F.cross_entropy(s_logits, labels)
        self.last = {k: float(v.detach()) for k, v in parts.items()}
        self.last["task"] = float(task.detach())
        return spec.alpha * distill + (1.0 - spec.alpha) * task

    def remove(self) -> None:
        self.s_cap.remove()
        self.t_cap.remove()


def _masked_mean(err: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    if mask is None or mask.shape != err.shape:
        return err.mean()
    w = mask.to(err.dtype)
    return (err * w).sum() / w.sum().clamp_min(1.0)


# ---- the handler ---------------------------------------------------------------------------------------------
def apply_distillation(model: nn.Module, spec: DistillationSpec, data: Optional[TaskData],
                       ctx: StageContext) -> nn.Module:
    """DistillationSpec handler: train the student (`model`, or the layers of it kept by ``spec.student``)
    against ``ctx.teacher`` and return it.

    Example: ``apply_distillation(bert_copy, DistillationSpec(student={"num_layers": 1}), data,
    StageContext(teacher=bert))``.
    """
    teacher = ctx.teacher
    if teacher is None:
        raise ValueError("distillation needs a teacher: the core sets ctx.teacher (StageContext(teacher=...))")
    if spec.training.distributed.value != "none":
        raise NotImplementedError("training.distributed 'data_parallel' is not supported by the torch adapter yet")
    teacher_layers = len(block_list(teacher)[2])
    if spec.student is not None:  # which layers: the core's rule (StudentSpec.layers_to_keep)
        keep_layers(model, spec.student.layers_to_keep(len(block_list(model)[2])))
    layer_map: list[tuple[int, int]] = []
    if {DistillKind.feature, DistillKind.relation} & set(spec.kinds):
        layer_map = spec.resolved_layer_map(len(block_list(model)[2]), teacher_layers)
        for si, ti in layer_map:  # logged so the conformance suite sees the pairs the losses use
            ctx.log("layer_map", si, ti)
    was_training = teacher.training
    teacher.eval()
    loss = DistillationLoss(model, teacher, spec, layer_map)
    try:
        train_loop(model, distillation_data(data), spec.training, ctx, loss_fn=loss, extra_params=loss.parameters())
    finally:
        loss.remove()
        teacher.train(was_training)
    model.eval()
    return model


def agreement(student: nn.Module, teacher: nn.Module, batches) -> float:
    """Fraction of examples where student and teacher predict the same class (argmax)."""
    from .training import to_torch_inputs

    same = total = 0
    with torch.no_grad():
        for x in batches:
            inputs = to_torch_inputs(x)
            a = forward_logits(student, inputs).argmax(-1)
            b = forward_logits(teacher, inputs).argmax(-1)
            same += int((a == b).sum())
            total += int(a.numel())
    return same / total if total else float("nan")


__all__ = ["apply_distillation", "keep_layers", "block_list", "block_names", "DistillationLoss", "agreement"]
