"""The oracle: what each spec means, computed in numpy. The planner takes its rules (ranks, schedules) from here
and the suite compares every backend with it; adapters execute the plan and do not call it."""
from . import lowrank, pruning, quantization, training
from .lowrank import optimal_error, rank_for, rank_for_energy, saves_parameters, truncated_svd
from .pruning import (block_mask, global_magnitude_masks, head_mask, head_scores, magnitude_mask, neuron_mask,
                      mask_update_due, nm_mask, polynomial_sparsity, sparsity_of)
from .quantization import (linear_qparams, log_dequantize, log_quantize, qrange, quantize_weight,
                           value_range)
from .training import learning_rate_at

__all__ = ["lowrank", "pruning", "quantization", "training", "learning_rate_at", "optimal_error", "rank_for", "rank_for_energy", "saves_parameters",
           "truncated_svd", "block_mask", "global_magnitude_masks", "head_mask", "head_scores", "magnitude_mask",
           "neuron_mask", "mask_update_due", "nm_mask", "polynomial_sparsity", "sparsity_of", "linear_qparams", "log_dequantize",
           "log_quantize", "qrange", "quantize_weight", "value_range"]
