"""Feature distillation and layer dropping on a user's Paddle nn.TransformerEncoder classifier (issue #17).

The blocks are the model's one LayerList of attention blocks (`models.block_list`), the hidden states come from
forward post-hooks on them, and the student is a copy with fewer blocks in that LayerList.
"""
import numpy as np
import pytest

import paddle
from unicompress import zoo
from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.errors import StructureError
from unicompress.specs import DistillationSpec
from unicompress_paddle import distillation, models
from unicompress_paddle.backend import PaddleAdapter

A = PaddleAdapter()
CFG = zoo.config_for("tiny-bert")


def _x(seed: int = 0) -> dict:
    return zoo.inputs_for("tiny-bert", CFG, batch=4, length=8, seed=seed)


def _tensors(x: dict) -> tuple:
    return paddle.to_tensor(x["input_ids"]), paddle.to_tensor(x["attention_mask"])


def task_data(n: int = 1) -> TaskData:
    return TaskData(train=lambda: ((_x(i), (_x(i)["input_ids"][:, 1] % 3).astype(np.int64)) for i in range(n)),
                    num_labels=3)


def _block_hidden(model, x: dict, upto: int) -> np.ndarray:
    """The hidden state after block `upto`, computed layer by layer (the encoder's own loop)."""
    ids, mask = _tensors(x)
    h = model.embedding(ids)
    src_mask = paddle.nn.layer.transformer._convert_attention_mask(mask.unsqueeze([1, 2]), h.dtype)
    for block in list(model.encoder.layers)[: upto + 1]:
        h = block(h, src_mask=src_mask)
    return h.numpy()


def _params(layer) -> int:
    return sum(int(np.prod(p.shape)) for p in layer.parameters())


def test_block_list_is_found_by_type():
    user = models.build_model("user-encoder")
    owner, attr, blocks = models.block_list(user)
    assert owner is user.encoder and attr == "layers" and len(blocks) == 2
    assert models.encoder_blocks(user) is user.encoder.layers
    bert = models.build_model("tiny-bert")
    assert models.encoder_blocks(bert) is bert.bert.encoder.layer
    # an encoder-decoder has two stacks: which one is meant is unknown, so it is refused by name
    pair = paddle.nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                 dim_feedforward=32)
    with pytest.raises(StructureError, match="encoder.layers .1 blocks., decoder.layers .1 blocks."):
        models.block_list(pair)
    with pytest.raises(StructureError, match="found none"):
        models.block_list(paddle.nn.Sequential(paddle.nn.Linear(4, 4)))


def test_features_hook_every_block():
    user = models.build_model("user-encoder")
    x = _x(0)
    out = distillation.features(user, *_tensors(x))
    assert len(out["hidden_states"]) == 3
    for i in range(2):
        np.testing.assert_allclose(out["hidden_states"][i + 1].numpy(), _block_hidden(user, x, i), rtol=1e-5,
                                   atol=1e-6)
    np.testing.assert_allclose(out["logits"].numpy(), user(*_tensors(x)).numpy(), rtol=1e-6)
    assert not any(b._forward_post_hooks for b in user.encoder.layers)  # the hooks are removed again


def test_feature_loss_pairs_the_layer_map_blocks_and_falls():
    teacher, student = models.build_model("user-encoder", seed=0), models.build_model("user-encoder", seed=1)
    spec = DistillationSpec(kinds=["feature"], feature_loss="mse", alpha=1.0, layer_map=[(0, 1), (1, 0)],
                            training={"steps": 12, "learning_rate": 2e-3, "batch_size": 4})
    x = _x(0)
    # the first step's loss is the mean over the map's pairs of the hidden-state MSE over the real tokens
    # (attention_mask 1: padding is no part of the loss on any backend), before any update
    real = np.asarray(_tensors(x)[1].numpy(), bool)
    assert not real.all()  # the batch has padding, so the mask matters here
    want = np.mean([np.mean(((_block_hidden(student, x, s) - _block_hidden(teacher, x, t)) ** 2).mean(-1)[real])
                    for s, t in spec.layer_map])
    ctx = StageContext(teacher=teacher)
    A.apply(student, spec, task_data(), ctx)
    assert [(int(s), int(t)) for s, t in ctx.history["layer_map"]] == [(0, 1), (1, 0)]
    losses = [v for _, v in ctx.history["loss"]]
    assert want > 0.1 and losses[0] == pytest.approx(want, rel=1e-4)
    assert max(losses[-3:]) < 0.8 * losses[0]


def test_drop_layers_keeps_the_chosen_block():
    teacher = models.build_model("user-encoder")
    student = distillation.drop_layers(teacher, [0])
    assert student.encoder.num_layers == 1 and len(student.encoder.layers) == 1
    assert _params(student) == _params(teacher) - _params(teacher.encoder.layers[1])
    assert A.structure(student).num_layers == 1 and A.structure(teacher).num_layers == 2
    # the student is the teacher's head on its block-0 hidden state
    x = _x(0)
    ids, mask = _tensors(x)
    keep = mask.astype("float32").unsqueeze(-1)
    h0 = paddle.to_tensor(_block_hidden(teacher, x, 0))
    want = teacher.classifier((h0 * keep).sum(axis=1) / paddle.clip(keep.sum(axis=1), min=1.0)).numpy()
    np.testing.assert_allclose(student(ids, mask).numpy(), want, rtol=1e-5, atol=1e-6)
    last = distillation.drop_layers(teacher, [1])
    np.testing.assert_array_equal(last.encoder.layers[0].linear2.weight.numpy(),
                                  teacher.encoder.layers[1].linear2.weight.numpy())


def test_drop_layers_stage_pairs_the_last_block():
    teacher = models.build_model("user-encoder")
    spec = DistillationSpec(kinds=["feature"], feature_loss="mse", alpha=1.0, student={"keep_layers": [0]},
                            training={"steps": 10, "learning_rate": 2e-3, "batch_size": 4})
    ctx = StageContext(teacher=teacher)
    before = {k: v.numpy().copy() for k, v in teacher.state_dict().items()}
    student = A.apply(A.copy(teacher), spec, task_data(), ctx)
    assert [(int(s), int(t)) for s, t in ctx.history["layer_map"]] == [(0, 1)]
    assert _params(student) == _params(teacher) - _params(teacher.encoder.layers[1])
    losses = [v for _, v in ctx.history["loss"]]
    assert len(losses) == 10 and losses[-1] < losses[0]
    assert all(np.array_equal(v.numpy(), before[k]) for k, v in teacher.state_dict().items())


def test_relation_without_recorded_attention_is_refused_before_training():
    spec = DistillationSpec(kinds=["relation"], alpha=1.0, training={"steps": 2})
    ctx = StageContext(teacher=models.build_model("user-encoder"))
    with pytest.raises(StructureError, match="relation distillation"):
        A.apply(models.build_model("user-encoder", seed=1), spec, task_data(), ctx)
    assert "loss" not in ctx.history
