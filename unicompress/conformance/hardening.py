"""Hardening checks a backend's own tests call on its real models (issue 13): compress() refuses NaN/inf weights
before any stage on every backend, for every technique, and leaves the input model exactly as it was.

The core refuses from the neutral weights (`unicompress.api`), so what this proves per backend is that the
adapter's `weights()` shows the poisoned tensor and that no native call (LAPACK SVD, observers, mask sorting)
ran on it first. Kept here, beside the conformance checks, so the four backends run the same body."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..specs import FineTuneSpec, LowRankSpec, PruningSpec, QuantizationSpec, TrainingSpec

#: one spec per technique whose native call would otherwise compute from the poisoned weight
POISON_SPECS: tuple[Any, ...] = (PruningSpec(sparsity=0.5), PruningSpec(granularity="n_m", n=2, m=4),
                                 QuantizationSpec(mode="dynamic"), QuantizationSpec(mode="weight_only"),
                                 LowRankSpec(rank=4, force=True),
                                 FineTuneSpec(training=TrainingSpec(steps=2, batch_size=4)))


def poisoned_copy(adapter: Any, model: Any, value: float) -> tuple[Any, str]:
    """A copy of `model` whose first listed layer's weight holds one `value` (NaN or inf); and that layer."""
    poisoned = adapter.copy(model)
    layer = adapter.layers(poisoned)[0].name
    w = adapter.weights(poisoned, [layer])[layer].copy()
    w.flat[w.size // 2] = value
    adapter.set_weights(poisoned, {layer: w})
    return poisoned, layer


def claimed(adapter: Any, spec: Any) -> bool:
    """The backend claims every value of `spec` and refuses none of its combinations."""
    return not adapter.capabilities().problems(spec) and not adapter.refusals(spec)


def assert_non_finite_refused(adapter: Any, model: Any, data: Any,
                              specs: Sequence[Any] = POISON_SPECS) -> list[str]:
    """For every spec the backend claims: compress() raises NonFiniteWeightsError naming the layer, before any stage, and
    the poisoned input model's weights are bit-identical afterwards. Returns the spec kinds checked."""
    import pytest

    from ..api import compress
    from ..errors import NonFiniteWeightsError

    checked = []
    for value in (np.nan, np.inf):
        poisoned, layer = poisoned_copy(adapter, model, value)
        before = adapter.weights(poisoned)
        for spec in specs:
            if not claimed(adapter, spec):
                continue
            with pytest.raises(NonFiniteWeightsError, match=layer.replace(".", r"\.")):
                compress(poisoned, spec, data, backend=adapter.name, progress=False)
            after = adapter.weights(poisoned)
            assert before.keys() == after.keys()
            for name, w in before.items():
                np.testing.assert_array_equal(w, after[name], err_msg=f"{name} changed after a refusal")
            checked.append(f"{type(spec).__name__}:{value}")
    return checked


def non_finite_test(adapter: Any, model: str = "tiny-bert"):
    """A pytest test function for one backend's suite: `assert_non_finite_refused` on its zoo `model`, checking
    pruning and quantization at least (each backend claims both) and every other technique it claims."""
    def test_non_finite_weights_are_refused_for_every_claimed_technique() -> None:
        from .cases import task_data

        checked = assert_non_finite_refused(adapter, adapter.build_model(model, seed=0), task_data(model))
        assert {c.split(":")[0] for c in checked} >= {"PruningSpec", "QuantizationSpec"}
        assert len(checked) >= 6

    return test_non_finite_weights_are_refused_for_every_claimed_technique
