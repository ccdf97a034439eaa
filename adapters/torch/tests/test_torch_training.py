"""The shared train loop: inputs, logits of any module, optimisation, logging, kept zeros, finetune."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from unicompress_torch_testutil import encoder_model, task_data, tiny

from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import FineTuneSpec, PruningSpec, TrainingSpec
from unicompress_torch.training import forward_logits, to_torch_inputs, train_loop

A = get_backend("torch")


def test_to_torch_inputs_dtypes():
    t = to_torch_inputs({"input_ids": np.array([[1, 2]], np.int32), "pixel_values": np.zeros((1, 2), np.float64)})
    assert t["input_ids"].dtype == torch.int64 and t["pixel_values"].dtype == torch.float32
    bare = to_torch_inputs(np.ones((2, 3), np.float32))
    assert list(bare) == ["input"] and bare["input"].shape == (2, 3)


def test_forward_logits_of_hf_plain_and_tuple_modules():
    model, _, x = tiny()
    assert forward_logits(model, to_torch_inputs(x)).shape == (4, 3)  # HF output with .logits

    class Tuple(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, features):
            return self.lin(features), "aux"

    y = forward_logits(Tuple(), to_torch_inputs({"features": np.ones((5, 3), np.float32)}))
    assert y.shape == (5, 2)
    enc = encoder_model()
    assert forward_logits(enc, to_torch_inputs(np.zeros((2, 4, 16), np.float32))).shape == (2, 3)


def test_train_loop_lowers_loss_logs_and_calls_hooks():
    model, _, _ = tiny()
    model = A.copy(model)
    calls = []
    ctx = StageContext()
    spec = TrainingSpec(steps=12, learning_rate=5e-3, warmup_steps=3, log_every=4)
    out = train_loop(model, task_data(), spec, ctx, on_step=calls.append)
    assert out is model and not model.training
    assert calls == list(range(13))  # before every step, then once with step == steps
    steps = [s for s, _ in ctx.history["loss"]]
    assert steps == [0, 4, 8, 11]
    losses = [v for _, v in ctx.history["loss"]]
    assert losses[-1] < losses[0]


def test_train_loop_is_seeded_and_cycles_data():
    model, _, x = tiny("tiny-vit")
    data = task_data("tiny-vit", batches=2)
    spec = TrainingSpec(steps=5, learning_rate=1e-3, seed=3, optimizer="sgd")
    a = train_loop(A.copy(model), data, spec)
    b = train_loop(A.copy(model), data, spec)
    np.testing.assert_array_equal(A.run(a, x), A.run(b, x))
    assert not np.allclose(A.run(a, x), A.run(model, x))


def test_train_loop_needs_data():
    model, _, _ = tiny()
    with pytest.raises(ValueError, match="train"):
        train_loop(model, TaskData(), TrainingSpec(steps=1))
    with pytest.raises(ValueError, match="no batches"):
        train_loop(model, TaskData(train=lambda: iter(())), TrainingSpec(steps=1))


def test_finetune_keeps_pruned_zeros():
    model, _, x = tiny()
    pruned = A.apply(A.copy(model), PruningSpec(sparsity=0.5), None, StageContext())
    zeros = {k: v == 0 for k, v in A.weights(pruned).items()}
    ctx = StageContext()
    tuned = A.apply(pruned, FineTuneSpec(training=TrainingSpec(steps=5, learning_rate=1e-2)), task_data(), ctx)
    after = A.weights(tuned)
    for name, z in zeros.items():
        assert (after[name][z] == 0).all(), name
    q = "bert.encoder.layer.0.attention.self.query"
    assert zeros[q].mean() == 0.5 and not np.array_equal(after[q], A.weights(model)[q] * ~zeros[q])  # trained
    assert not any(hasattr(m, "weight_mask") for m in tuned.modules())  # temporary masks removed
    assert len(ctx.history["loss"]) == 5


# training.distributed: data_parallel (torchrun + DDP, and its error outside torchrun): test_torch_distributed.py


def test_nonfinite_loss_is_reported():
    model, _, _ = tiny()

    def bad_loss(m, inputs, labels):
        return forward_logits(m, inputs).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="learning_rate"):
        train_loop(A.copy(model), task_data(), TrainingSpec(steps=2), loss_fn=bad_loss)
