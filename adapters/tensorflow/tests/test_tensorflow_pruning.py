"""Pruning through TFMOT: achieved sparsity per granularity, agreement with the reference masks,
the frequency pitfall, gradual schedule logging, neuron/head rebuilds."""
from __future__ import annotations

import numpy as np
import pytest
from unicompress import zoo
from unicompress.backend import StageContext, TaskData
from unicompress.reference import pruning as ref
from unicompress.specs import PruningSpec

from unicompress_tensorflow import layers, models, pruning
from unicompress_tensorflow.backend import TensorFlowAdapter

ADAPTER = TensorFlowAdapter()
Q0 = "bert.encoder.layer.0.attention.self.query"
FFN_IN = "bert.encoder.layer.1.intermediate.dense"


def _bert():
    return models.build_model("tiny-bert")


def _data(n_batches=4, batch=4):
    cfg = zoo.config_for("tiny-bert")

    def train():
        for i in range(n_batches):
            x = zoo.inputs_for("tiny-bert", cfg, batch=batch, seed=i)
            yield x, (x["input_ids"][:, 1] % 3).astype(np.int64)
    return TaskData(train=train, num_labels=3)


def _selected_weights(model, spec):
    return layers.get_weights(model, pruning.selected_dense(model, spec))


def test_unstructured_one_shot_exact_and_matches_reference():
    model = _bert()
    spec = PruningSpec(sparsity=0.5)
    before = _selected_weights(model, spec)
    ctx = StageContext()
    out = ADAPTER.apply(ADAPTER.copy(model), spec, None, ctx)
    after = _selected_weights(out, spec)
    assert len(after) == 12  # Q/K/V/O/FFN x 2 blocks; classifier, pooler, embeddings untouched
    for name, w in after.items():
        assert ref.sparsity_of(w) == pytest.approx(0.5, abs=1e-9)
        assert ref.mask_agreement(w != 0, ref.magnitude_mask(before[name], 0.5)) == 1.0
        np.testing.assert_array_equal(w[w != 0], before[name][w != 0])  # kept weights unchanged
    assert ctx.history["sparsity"] == [(0, 0.5)]
    assert ref.sparsity_of(layers.get_weights(out, ["classifier"])["classifier"]) == 0.0
    assert not any(isinstance(x, pruning.PruneLowMagnitude) for x in out.layers)  # stripped
    # the user's model is untouched
    assert ref.sparsity_of(layers.get_weights(model, [Q0])[Q0]) == 0.0


def test_n_m_exact_along_input_dim_and_matches_reference():
    model = _bert()
    spec = PruningSpec(granularity="n_m", n=2, m=4)
    before = _selected_weights(model, spec)
    out = ADAPTER.apply(model, spec)
    for name, w in _selected_weights(out, spec).items():
        groups = (w != 0).reshape(w.shape[0], -1, 4)  # neutral [out, in]: groups along in
        assert (groups.sum(-1) == 2).all(), name
        assert ref.mask_agreement(w != 0, ref.nm_mask(before[name], 2, 4)) == 1.0


def test_block_l1_native_and_l2_emulated_match_reference():
    model = _bert()
    for norm in ("l1", "l2"):
        spec = PruningSpec(granularity="block", block_shape=(4, 8), sparsity=0.5, norm=norm)
        before = _selected_weights(model, spec)
        out = ADAPTER.apply(ADAPTER.copy(model), spec)
        for name, w in _selected_weights(out, spec).items():
            expected = ref.block_mask(before[name], (4, 8), 0.5, norm)
            assert ref.sparsity_of(w) == pytest.approx(0.5), (norm, name)
            assert ref.mask_agreement(w != 0, expected) == 1.0, (norm, name)


def test_tfmot_default_frequency_prunes_nothing_in_a_short_run():
    """The pitfall: ConstantSparsity(0.5, 0) keeps frequency=100; our schedule passes frequency=1."""
    model = _bert()
    names = [Q0]
    broken = pruning.wrap(layers.copy_model(model), names,
                          {"pruning_schedule": pruning.sparsity.ConstantSparsity(0.5, 0)})
    fixed = pruning.wrap(layers.copy_model(model), names,
                         {"pruning_schedule": pruning.sparsity.ConstantSparsity(0.5, 0, frequency=1)})
    x = layers.to_tensors(model, zoo.inputs_for("tiny-bert", zoo.config_for("tiny-bert")))
    for m in (broken, fixed):
        for w in pruning.wrappers(m):
            w.pruning_step.assign(0)
        for _ in range(5):  # five training forwards: steps 1..5
            m(x, training=True)
    assert pruning.mask_sparsity(broken) == 0.0
    assert pruning.mask_sparsity(fixed) == pytest.approx(0.5)


def test_polynomial_schedule_in_training_logs_the_curve():
    model = _bert()
    spec = PruningSpec(sparsity=0.8, schedule={"kind": "polynomial", "begin_step": 0, "end_step": 8,
                                               "frequency": 2, "power": 3},
                       training={"steps": 10, "learning_rate": 1e-3, "batch_size": 4})
    ctx = StageContext()
    out = ADAPTER.apply(model, spec, _data(), ctx)
    curve = ctx.history["sparsity"]
    assert [s for s, _ in curve] == [2, 4, 6, 8]
    for step, value in curve:
        assert value == pytest.approx(ref.polynomial_sparsity(step, 0.8, 0.0, 0, 8, 3), abs=2e-3)
    for w in _selected_weights(out, spec).values():
        assert ref.sparsity_of(w) == pytest.approx(0.8, abs=2e-3)
    assert len(ctx.history["loss"]) == 10


def test_neuron_pruning_rebuilds_smaller_and_matches_masked_model():
    model = _bert()
    spec = PruningSpec(granularity="neuron", sparsity=0.25)
    w_in = layers.get_weights(model, [FFN_IN])[FFN_IN]
    keep = ref.neuron_mask(w_in, 0.25, "l2")
    small = ADAPTER.apply(ADAPTER.copy(model), spec)
    assert layers.get_weights(small, [FFN_IN])[FFN_IN].shape == (48, 32)
    np.testing.assert_array_equal(layers.get_weights(small, [FFN_IN])[FFN_IN], w_in[keep])
    masked = ADAPTER.apply(ADAPTER.copy(model), spec.model_copy(update={"remove_pruned": False}))
    w_masked = layers.get_weights(masked, [FFN_IN])[FFN_IN]
    assert w_masked.shape == (64, 32) and (w_masked[~keep] == 0).all()
    x = zoo.inputs_for("tiny-bert", zoo.config_for("tiny-bert"))
    np.testing.assert_allclose(ADAPTER.run(small, x), ADAPTER.run(masked, x), atol=1e-5)


def test_head_pruning_rebuilds_fewer_heads_and_matches_reference():
    model = _bert()
    spec = PruningSpec(granularity="head", sparsity=0.5, norm="l1")
    st = layers.structure(model)
    a = st.attention[0]
    W = layers.get_weights(model, [a.query, a.key, a.value, a.output])
    keep = ref.head_mask(W[a.query], W[a.key], W[a.value], W[a.output], 4, 0.5, "l1")
    small = ADAPTER.apply(ADAPTER.copy(model), spec)
    s2 = layers.structure(small)
    assert [x.num_heads for x in s2.attention] == [2, 2]
    rows = np.repeat(keep, 8)
    np.testing.assert_array_equal(layers.get_weights(small, [a.query])[a.query], W[a.query][rows])
    np.testing.assert_array_equal(layers.get_weights(small, [a.output])[a.output], W[a.output][:, rows])
    masked = ADAPTER.apply(ADAPTER.copy(model), spec.model_copy(update={"remove_pruned": False}))
    x = zoo.inputs_for("tiny-bert", zoo.config_for("tiny-bert"))
    np.testing.assert_allclose(ADAPTER.run(small, x), ADAPTER.run(masked, x), atol=1e-5)


def test_global_scope_and_other_criteria_are_refused():
    caps = ADAPTER.capabilities()
    assert caps.problems(PruningSpec(sparsity=0.5, scope="global"))
    assert caps.problems(PruningSpec(sparsity=0.5, criterion="movement", training={"steps": 2}))
    with pytest.raises(pruning.PruningNotSupportedError, match="global"):
        ADAPTER.apply(_bert(), PruningSpec(sparsity=0.5, scope="global"))


def test_refusals_name_the_combinations_emulated_paths_cannot_do():
    training = {"steps": 4}
    gradual = {"kind": "polynomial", "end_step": 4}
    assert [p.path for p in ADAPTER.refusals(PruningSpec(granularity="head", sparsity=0.5, schedule=gradual,
                                                         training=training))] == ["schedule.kind"]
    assert [p.path for p in ADAPTER.refusals(PruningSpec(granularity="block", block_shape=(4, 4), sparsity=0.5,
                                                         norm="l2", schedule=gradual, training=training))] == ["norm"]
    assert ADAPTER.refusals(PruningSpec(granularity="block", block_shape=(4, 4), sparsity=0.5, norm="l1",
                                        schedule=gradual, training=training)) == []
    assert ADAPTER.refusals(PruningSpec(granularity="head", sparsity=0.5)) == []
