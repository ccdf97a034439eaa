"""What a training stage's learning-rate schedule means, in numpy: the one rule every backend's optimizer follows.

Linear warm-up to the peak, then constant (compression stages are short; decaying to zero would waste their
last steps): the learning rate of optimizer step ``s`` (0-based: the first update is step 0) is

    learning_rate * min(1, (s + 1) / warmup_steps)        (learning_rate itself when warmup_steps == 0)

so the first update already moves (1/warmup of the peak, not 0 as a schedule counting from 0 gives) and the
peak is reached at step warmup_steps - 1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: AdamW's hyper-parameters, set explicitly on every backend (tf_keras' own default epsilon is 1e-7)
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPSILON = 1e-8


def learning_rate_at(step: int, learning_rate: float, warmup_steps: int) -> float:
    """The learning rate of 0-based optimizer step `step`. Example: ``learning_rate_at(0, 1e-3, 4) == 2.5e-4``."""
    return float(learning_rate) * (min(1.0, (int(step) + 1) / warmup_steps) if warmup_steps > 0 else 1.0)


def sgd_trajectory(w0: float, grads: Sequence[float], learning_rate: float, warmup_steps: int = 0,
                   momentum: float = 0.0, weight_decay: float = 0.0) -> list[float]:
    """The weight after each SGD step on the given gradients: ``g = grad + weight_decay * w;
    v = momentum * v + g`` (v = g on the first step); ``w -= lr_s * v``."""
    w, v, out = float(w0), None, []
    for s, grad in enumerate(grads):
        g = float(grad) + weight_decay * w
        v = g if v is None else momentum * v + g
        w -= learning_rate_at(s, learning_rate, warmup_steps) * v
        out.append(w)
    return out


def adamw_trajectory(w0: float, grads: Sequence[float], learning_rate: float, warmup_steps: int = 0,
                     weight_decay: float = 0.0) -> list[float]:
    """The weight after each AdamW step (decoupled weight decay, Loshchilov & Hutter): ``w -= lr_s * wd * w``,
    then the bias-corrected Adam step ``w -= lr_s * m_hat / (sqrt(v_hat) + eps)``."""
    (b1, b2), eps = ADAMW_BETAS, ADAMW_EPSILON
    w, m, v, out = float(w0), 0.0, 0.0, []
    for s, grad in enumerate(grads):
        lr = learning_rate_at(s, learning_rate, warmup_steps)
        w -= lr * weight_decay * w
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        w -= lr * (m / (1 - b1 ** (s + 1))) / (np.sqrt(v / (1 - b2 ** (s + 1))) + eps)
        out.append(w)
    return out


__all__ = ["ADAMW_BETAS", "ADAMW_EPSILON", "adamw_trajectory", "learning_rate_at", "sgd_trajectory"]
