"""The torch backend's capability table (pure data: imports no framework).

Support.native: done by torch's own toolkit (torch.nn.utils.prune and its BasePruningMethod
extension point); Support.emulated: scored or built by unicompress with torch ops.
Every row here is exercised by adapters/torch/tests and the conformance suite.
"""
from __future__ import annotations

from unicompress.backend.capabilities import Capabilities, Support, build_table

from .capabilities_qd import DISTILLATION_ROWS, QUANTIZATION_ROWS

PRUNING_ROWS = [
    # prune.l1_unstructured / prune.global_unstructured
    ("pruning", "granularity", ["unstructured"], Support.native),
    # custom prune.BasePruningMethod subclasses (the documented extension point) apply the masks
    ("pruning", "granularity", ["n_m", "block"], Support.native),
    # prune.ln_structured over FFN-in rows (+ matching FFN-out columns)
    ("pruning", "granularity", ["neuron"], Support.native),
    # head scores by unicompress, masks by prune.custom_from_mask, removal by
    # transformers.pytorch_utils.prune_linear_layer (transformers 5 has no BertModel.prune_heads)
    ("pruning", "granularity", ["head"], Support.emulated),
    ("pruning", "criterion", ["magnitude"], Support.native),
    ("pruning", "criterion", ["movement", "l1_regularized", "l0_regularized"], Support.emulated),
    ("pruning", "scope", ["per_layer", "global"], Support.native),
    ("pruning", "schedule.kind", ["one_shot", "polynomial"], Support.native),
    ("pruning", "norm", ["l1", "l2"], Support.native),
    ("pruning", "remove_pruned", [True], Support.native),
]
LOW_RANK_ROWS = [
    # torch.linalg.svd + two nn.Linear: torch has no factorisation toolkit of its own
    ("low_rank", "by", ["rank", "energy"], Support.emulated),
]
FINETUNE_ROWS = [
    ("finetune", "training.distributed", ["none"], Support.native),
    # torch.distributed (gloo on CPU, nccl on CUDA) + DistributedDataParallel under torchrun
    ("finetune", "training.distributed", ["data_parallel"], Support.native),
]

NOTES = {
    "pruning": "masks through torch.nn.utils.prune, made permanent with prune.remove; head/neuron removal "
               "rebuilds the Linears (HF config.pruned_heads / intermediate sizes updated). Heads of "
               "nn.MultiheadAttention (packed in_proj) are masked but not removed (remove_pruned: true is "
               "refused there). N:M is local to each group, so scope global equals per_layer for it.",
    "low_rank": "a Linear becomes LowRankLinear(Linear(in, r), Linear(r, out)) under the same name "
                "(children '.0' and '.1').",
    "finetune": "AdamW/SGD, linear warmup then constant learning rate; pruned zeros are kept zero. "
                "data_parallel: DistributedDataParallel in processes started by torchrun (gloo on CPU, "
                "nccl for a CUDA model); each rank trains on rows rank::world_size of every batch.",
}


def torch_capabilities() -> Capabilities:
    """The full table: pruning, low-rank and fine-tuning rows here, quantization/distillation rows
    from `capabilities_qd`."""
    rows = PRUNING_ROWS + LOW_RANK_ROWS + FINETUNE_ROWS + list(QUANTIZATION_ROWS) + list(DISTILLATION_ROWS)
    notes = dict(NOTES)
    try:  # the other helper may add notes of its own
        from .capabilities_qd import NOTES as QD_NOTES  # type: ignore[attr-defined]
        notes.update(QD_NOTES)
    except ImportError:
        pass
    return Capabilities("torch", build_table(rows), notes)
