"""The TensorFlow backend's capability table (pure data; no framework import)."""
from __future__ import annotations

from unicompress.backend.capabilities import Capabilities, Support, build_table

N, E = Support.native, Support.emulated


def tensorflow_capabilities() -> Capabilities:
    """What the TensorFlow backend honours; every claimed value is covered by a test."""
    rows = [
        ("pruning", "granularity", ["unstructured", "n_m", "block"], N),
        ("pruning", "granularity", ["neuron", "head"], E),
        ("pruning", "criterion", ["magnitude"], N),
        ("pruning", "scope", ["per_layer"], N),
        ("pruning", "schedule.kind", ["one_shot", "polynomial"], N),
        ("pruning", "norm", ["l1", "l2"], E),
        ("pruning", "remove_pruned", [True], E),
    ]
    notes = {
        "pruning": "tfmot.sparsity.keras.prune_low_magnitude (ConstantSparsity/PolynomialDecay with frequency "
                   "from the spec, sparsity_m_by_n for N:M, block_size for block), strip_pruning. One-shot = the "
                   "wrapper's own conditional_mask_update at step 0. Block blocks are scored by TFMOT's AVG "
                   "pooling of |w| (= the L1 norm for full blocks); neuron/head pruning and the L2 block norm are "
                   "emulated (masks by TF ops, rebuild by clone_model). No global scope in TFMOT.",
    }
    return Capabilities("tensorflow", build_table(rows), notes)
