"""Paddle's training loop stops on a NaN/inf loss with the message torch and TensorFlow give, and class labels that
are floats are refused, not truncated (issue 13, class 6)."""
import numpy as np
import pytest

import paddle  # noqa: F401  (Paddle first: this process may also import torch/onnxruntime)
from unicompress import compress
from unicompress.backend.types import TaskData
from unicompress.conformance.cases import task_data
from unicompress.errors import InvalidDataError, StageError
from unicompress.specs import FineTuneSpec
from unicompress_paddle.backend import PaddleAdapter

A = PaddleAdapter()
SGD = {"steps": 4, "learning_rate": 10.0, "optimizer": "sgd", "batch_size": 8}


def _diverging_model():
    """Finite weights whose logits are ~1e30: step 0's loss is finite, SGD at lr 10 then overflows."""
    m = A.build_model("tiny-bert", seed=0)
    w = A.weights(m, ["classifier"])["classifier"]
    A.set_weights(m, {"classifier": np.full_like(w, 1e30)})
    return m


def test_non_finite_loss_stops_the_stage_with_the_message_of_torch_and_tensorflow():
    m = _diverging_model()
    message = r"^training loss became nan at step 1; lower training\.learning_rate$"
    with pytest.raises(FloatingPointError, match=message):
        A.apply(m, FineTuneSpec(training=SGD), task_data("tiny-bert"))
    # the guard runs before the backward pass: the NaN step was not applied, the weights are still finite
    assert all(np.isfinite(v).all() for v in A.weights(m).values())


def test_non_finite_loss_through_compress_leaves_the_input_model_untouched():
    m = _diverging_model()
    before = A.weights(m)
    recipe = {"name": "diverge", "stages": [{"technique": "finetune", "training": SGD}]}
    with pytest.raises(StageError, match="stage 0 .finetune. failed: FloatingPointError: training loss became") as err:
        compress(m, recipe, task_data("tiny-bert"), backend="paddle", progress=False)
    assert isinstance(err.value.__cause__, FloatingPointError)
    after = A.weights(m)
    assert all(np.array_equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_float_class_labels_are_refused_not_truncated(shift):
    """1.0 and 1.4 alike: a float label is refused before the first optimizer step (torch and TensorFlow read the
    same core stream, `TaskData.endless_train`)."""
    good = task_data("tiny-bert")
    x, y = next(iter(good.train()))
    data = TaskData(train=lambda: iter([(x, y.astype(np.float32) + shift)]), num_labels=3)
    m = A.build_model("tiny-bert", seed=0)
    before = A.weights(m)
    with pytest.raises(InvalidDataError, match=r"labels are float32 \[.*\]; class labels are integers"):
        A.apply(m, FineTuneSpec(training={"steps": 2, "batch_size": 8}), data)
    assert all(np.array_equal(before[n], v) for n, v in A.weights(m).items())
