"""The core's meaning of a distillation loss (`unicompress.reference.distillation.first_step_loss`) and the report
table built from the conformance suite's first_loss check."""
from __future__ import annotations

import numpy as np
import pytest

from unicompress import zoo
from unicompress.conformance.report import first_loss_markdown
from unicompress.reference.distillation import first_step_loss
from unicompress.specs import DistillationSpec
from unicompress.zoo.reference import bert_features, bert_logits


def _features(seed, inputs):
    cfg = zoo.config_for("tiny-bert")
    return bert_features(cfg, zoo.weights_for("tiny-bert", cfg, seed=seed), inputs), cfg


def _inputs():
    cfg = zoo.config_for("tiny-bert")
    x = zoo.inputs_for("tiny-bert", cfg, batch=4, length=12, seed=3)
    x["attention_mask"] = np.ones_like(x["attention_mask"])
    x["attention_mask"][1, 8:] = 0
    return x


def test_a_student_equal_to_its_teacher_has_zero_distillation_terms():
    x = _inputs()
    (t, cfg) = _features(0, x)
    spec = DistillationSpec(kinds=["response", "feature", "relation"], alpha=0.5)
    terms = first_step_loss(spec, t, t, x["attention_mask"], np.zeros(4, np.int64))
    assert terms["response"] == pytest.approx(0, abs=1e-12) and terms["feature"] == pytest.approx(0, abs=1e-12)
    assert terms["relation"] == pytest.approx(0, abs=1e-9)
    assert terms["total"] == pytest.approx(0.5 * terms["task"])
    np.testing.assert_allclose(t["logits"], bert_logits(cfg, zoo.weights_for("tiny-bert", cfg, seed=0), x))


def test_padded_positions_do_not_count_and_pairs_are_averaged():
    x = _inputs()
    t, _ = _features(0, x)
    s, _ = _features(1, x)
    spec = DistillationSpec(kinds=["feature"], feature_loss="mse", alpha=1.0, layer_map=[(0, 1), (1, 0)])
    mask = x["attention_mask"]
    base = first_step_loss(spec, t, s, mask, np.zeros(4, np.int64))["feature"]
    moved = {**s, "hidden": [h.copy() for h in s["hidden"]]}
    for h in moved["hidden"]:
        h[1, 8:] += 100.0  # only padded positions change
    assert first_step_loss(spec, t, moved, mask, np.zeros(4, np.int64))["feature"] == pytest.approx(base)
    real = mask.astype(bool)
    want = np.mean([((s["hidden"][a] - t["hidden"][b]) ** 2).mean(-1)[real].mean() for a, b in spec.layer_map])
    assert base == pytest.approx(want)


def test_first_loss_table_lists_every_backend_beside_the_reference():
    data = {"backends": {
        "torch": {"cases": {"distillation/x": {"mode": "claimed", "checks": {"first_loss": {
            "passed": True, "numbers": {"first_loss": 1.5, "reference": 1.5}}}}}},
        "tensorflow": {"cases": {"distillation/x": {"mode": "claimed", "checks": {"first_loss": {
            "passed": False, "numbers": {"first_loss": 3.0, "reference": 1.5}}}}}}}}
    table = first_loss_markdown(data)
    assert "| `distillation/x` | 1.500000 | 1.500000 | 3.000000 **FAIL** |" in table
