"""Which metric each task's evaluation reports, and whether a model's outputs fit the task (refused before work).

- ``classification`` (the default of `TaskData.task`): accuracy, by the backend's own `Adapter.evaluate`;
- ``causal-lm``: perplexity, NLL and the token count, computed in the core from `Adapter.run` logits
  [batch, seq, vocab] (`unicompress.metrics.causal_lm_metrics`).

`task_problems` runs the model once on one row of the data (the first evaluation or train batch) and refuses
a causal-lm task whose model does not give [batch, seq, vocab] logits over the data's ids, and classification
data for a model that gives per-token logits (a causal LM): its accuracy would compare a [batch, seq] argmax
with one label per row.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .backend.types import TaskData
from .metrics import causal_lm_metrics

#: tasks whose evaluation this module knows, with their metric names
TASK_METRICS = {"classification": ("accuracy",), "causal-lm": ("perplexity", "nll", "tokens")}
#: rows of logits computed per `run` call when evaluating a causal LM (bounds memory: logits are rows x seq x vocab)
LM_ROWS_PER_RUN = 4


def evaluate_task(adapter: Any, model: Any, data: TaskData) -> dict[str, float]:
    """The metrics of `model` on ``data.evaluation()`` for ``data.task`` (see the module)."""
    if data.task == "causal-lm":
        rows = int(data.extra.get("rows_per_run", LM_ROWS_PER_RUN))
        return causal_lm_metrics(lambda x: adapter.run(model, x), data.evaluation(), rows_per_run=rows)
    return adapter.evaluate(model, data.evaluation())


def _first_row(data: TaskData) -> Optional[tuple[Any, Any]]:
    """One row of the first evaluation (else train) batch, or None when the data has neither."""
    for make in (data.evaluation, data.train):
        if make is None:
            continue
        iterator = iter(make())
        try:
            x, y = next(iterator)
        except StopIteration:
            continue
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        one = {k: np.asarray(v)[:1] for k, v in x.items()} if isinstance(x, dict) else np.asarray(x)[:1]
        return one, np.asarray(y)[:1]
    return None


def task_problems(adapter: Any, model: Any, data: Optional[TaskData], uses_labels: bool = True) -> list[str]:
    """Why `data`'s task does not fit `model`'s outputs (one model run on one row); [] when it fits.

    `uses_labels`: whether anything will read the labels (an evaluation, a stage that trains); classification
    data for a causal LM is refused only then (calibration reads inputs only).
    """
    if data is None or (data.task != "causal-lm" and not uses_labels):
        return []
    row = _first_row(data)
    if row is None:
        return []
    x, y = row
    out = np.asarray(adapter.run(model, x))
    ids = x.get("input_ids") if isinstance(x, dict) else None
    seq = np.shape(ids)[1] if ids is not None and np.ndim(ids) == 2 else None
    if data.task == "causal-lm":
        if out.ndim != 3 or (seq is not None and out.shape[1] != seq):
            return [f"data.task is 'causal-lm', but the model's output is {list(out.shape)} for input_ids "
                    f"{list(np.shape(ids)) if ids is not None else '(none)'}, not [batch, seq, vocab] logits: give a "
                    "causal language model (e.g. a Hugging Face *ForCausalLM), or classification data"]
        valid = y[y >= 0] if y.dtype.kind in "iu" else y
        if valid.size and int(valid.max()) >= out.shape[2]:
            return [f"data.task is 'causal-lm': token id {int(valid.max())} is outside the model's vocabulary of "
                    f"{out.shape[2]} (the data was tokenised for another model: give this model's tokenizer)"]
        return []
    if data.task == "classification" and out.ndim == 3 and seq is not None and out.shape[1] == seq and \
            y.ndim == 1:
        return [f"data.task is 'classification' (one label per row), but the model gives per-token logits "
                f"{list(out.shape)} (a causal language model?): set data: {{task: causal-lm}} to measure "
                "perplexity on token blocks"]
    return []


__all__ = ["TASK_METRICS", "evaluate_task", "task_problems", "LM_ROWS_PER_RUN"]
