"""Handlers execute the core's plan: every planned layer (attention included) is pruned to target, nothing else;
quantization keeps the head float by default; a plan handed in through ctx.plan is followed as given."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from unicompress_torch_hf_testutil import build
from unicompress_torch_testutil import encoder_model

from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.planner import plan_stage
from unicompress.reference import pruning as R
from unicompress.specs import PruningSpec, QuantizationSpec, TrainingSpec
from unicompress.specs.selector import LayerRole

A = get_backend("torch")


@pytest.mark.parametrize("name", ["gpt2", "mpnet", "t5", "llama", "encoder"])
def test_unstructured_half_on_every_planned_layer(name):
    model, x = (encoder_model(), None) if name == "encoder" else build(name)
    spec = PruningSpec(sparsity=0.5)
    plan = plan_stage(A, model, spec)
    roles = plan.roles
    assert {roles[n] for n in plan.selected} >= {LayerRole.attention_output, LayerRole.ffn_in, LayerRole.ffn_out}
    assert any(roles[n] in (LayerRole.query, LayerRole.qkv) for n in plan.selected)  # attention is planned too
    pruned = A.apply(A.copy(model), spec, None, StageContext(plan=plan))
    before, after = A.weights(model), A.weights(pruned)
    for n in after:
        if n in plan.selected:
            assert R.sparsity_of(after[n]) == 0.5, n
            np.testing.assert_array_equal(after[n] != 0, R.magnitude_mask(before[n], 0.5))
        else:
            np.testing.assert_array_equal(after[n], before[n])  # unplanned layers (head, embeddings) untouched


def test_mpnet_neuron_masks_pair_the_right_axes():
    """The user report: pruned intermediate rows must zero output.dense columns (its inputs), not its rows."""
    model, _ = build("mpnet")
    pruned = A.apply(A.copy(model), PruningSpec(granularity="neuron", sparsity=0.5, remove_pruned=False))
    w = A.weights(pruned)
    for i in range(2):
        rows = (w[f"mpnet.encoder.layer.{i}.intermediate.dense"] != 0).any(axis=1)
        out = w[f"mpnet.encoder.layer.{i}.output.dense"]
        assert rows.sum() == 32
        np.testing.assert_array_equal((out != 0).any(axis=0), rows)
        assert (out != 0).any(axis=1).all()
    assert (w["mpnet.encoder.layer.0.attention.attn.q"] != 0).all()  # attention is pruned by heads, not here


def test_gpt2_conv1d_n_m_groups_run_along_the_input():
    model, _ = build("gpt2")
    pruned = A.apply(A.copy(model), PruningSpec(granularity="n_m", n=2, m=4))
    before, after = A.weights(model), A.weights(pruned)
    for n in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"):
        np.testing.assert_array_equal(after[n] != 0, R.nm_mask(before[n], 2, 4))


def test_a_given_plan_is_followed_exactly():
    model, x = build("roberta")
    spec = PruningSpec(sparsity=0.5)
    full = plan_stage(A, model, spec)
    only = tuple(n for n in full.selected if n.endswith("attention.self.key"))
    plan = dataclasses.replace(full, selected=only)
    pruned = A.apply(A.copy(model), spec, None, StageContext(plan=plan))
    before, after = A.weights(model), A.weights(pruned)
    assert [n for n in after if not np.array_equal(after[n], before[n])] == list(only)
    assert all(R.sparsity_of(after[n]) == 0.5 for n in only)
    qspec = QuantizationSpec(mode="dynamic")
    qplan = dataclasses.replace(plan_stage(A, model, qspec), selected=only)
    quantized = A.apply(A.copy(model), qspec, None, StageContext(plan=qplan))
    assert sorted(n for n, s in ((s.name, s) for s in A.describe(quantized)) if s.bits < 32) == sorted(only)


def test_roberta_dynamic_int8_keeps_the_classifier_float():
    model, x = build("roberta")
    quantized = A.apply(A.copy(model), QuantizationSpec(mode="dynamic"), None, StageContext())
    bits = {s.name: s.bits for s in A.describe(quantized)}
    assert bits["classifier.out_proj"] == 32 and bits["classifier.dense"] == 32
    assert sorted(n for n, b in bits.items() if b == 8) == sorted(n for n in bits if ".encoder.layer." in n)
    assert np.abs(A.run(quantized, x) - A.run(model, x)).max() < 0.05


def test_gpt2_int8_quantizes_conv1d_layers_under_their_names():
    model, x = build("gpt2")
    quantized = A.apply(A.copy(model), QuantizationSpec(mode="dynamic"), None, StageContext())
    bits = {s.name: s.bits for s in A.describe(quantized)}
    assert {n for n, b in bits.items() if b == 8} == {f"transformer.h.{i}.{p}" for i in range(2)
                                                       for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                 "mlp.c_proj")}
    assert bits["score"] == 32
    assert np.abs(A.run(quantized, x) - A.run(model, x)).max() < 0.05


def test_gpt2_movement_trains_through_conv1d_masks():
    model, x = build("gpt2")
    rng = np.random.default_rng(0)
    batches = [({"input_ids": rng.integers(3, 100, (4, 8)), "attention_mask": np.ones((4, 8), np.int64)},
                rng.integers(0, 2, 4)) for _ in range(2)]
    spec = PruningSpec(granularity="neuron", sparsity=0.5, criterion="movement", remove_pruned=True,
                       schedule={"kind": "polynomial", "end_step": 2, "frequency": 1},
                       training=TrainingSpec(steps=2, learning_rate=1e-3))
    ctx = StageContext()
    pruned = A.apply(A.copy(model), spec, TaskData(train=lambda: iter(batches)), ctx)
    assert ctx.history["sparsity"][-1][1] == pytest.approx(0.5, abs=1e-3)
    assert pruned.transformer.h[0].mlp.c_fc.nf == 32 and pruned.transformer.h[0].mlp.c_proj.nx == 32
    assert np.isfinite(A.run(pruned, x)).all()


def test_mha_packed_projection_quantization_is_refused_before_work():
    from unicompress.errors import LayerSelectionError
    model = encoder_model()
    with pytest.raises(LayerSelectionError, match="(?s)in_proj: layer kind 'packed_qkv'.*allow_partial"):
        A.apply(A.copy(model), QuantizationSpec(mode="dynamic"), None, StageContext())


# ---- a user's own modules ---------------------------------------------------------------------------------------
class _UserAttention(torch.nn.Module):
    """Self-attention written by a user: children wq/wk/wv/wo and an n_heads attribute."""

    def __init__(self, hidden: int = 16, heads: int = 4):
        super().__init__()
        self.n_heads = heads
        self.wq, self.wk, self.wv, self.wo = (torch.nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, x):
        b, n, h = x.shape
        q, k, v = (f(x).view(b, n, self.n_heads, -1).transpose(1, 2) for f in (self.wq, self.wk, self.wv))
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
        return self.wo(a.transpose(1, 2).reshape(b, n, -1))


class _UserModel(torch.nn.Module):
    def __init__(self, names=("attn", "mlp")):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList(torch.nn.ModuleDict({
            names[0]: _UserAttention(),
            names[1]: torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))})
            for _ in range(2))
        self.names = names
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        for blk in self.blocks:
            x = x + blk[self.names[0]](x)
            x = x + blk[self.names[1]](x)
        return self.head(x[:, 0])


def test_a_users_attention_is_found_masked_and_its_ffn_removed():
    from unicompress.api import compress
    from unicompress.errors import StructureError

    model = _UserModel().eval()
    x = np.random.default_rng(0).normal(size=(3, 5, 16)).astype(np.float32)
    s = A.structure(model)
    assert [(a.query, a.output, a.num_heads, a.head_dim) for a in s.attention] == [
        (f"blocks.{i}.attn.wq", f"blocks.{i}.attn.wo", 4, 4) for i in range(2)]
    assert [(f.ffn_in, f.ffn_out) for f in s.ffn] == [(f"blocks.{i}.mlp.0", f"blocks.{i}.mlp.2") for i in range(2)]
    assert s.classifier == "head" and not any(a.removable for a in s.attention)
    assert "_UserAttention" in s.attention[0].note
    with pytest.raises(StructureError, match="not verified"):  # refused before any work
        compress(model, PruningSpec(granularity="head", sparsity=0.5), export_example=x, progress=False)
    masked = compress(model, PruningSpec(granularity="head", sparsity=0.5, remove_pruned=False), export_example=x,
                      progress=False)
    assert all(c["passed"] for c in masked.report.stages[0].checks)
    removed = compress(model, PruningSpec(granularity="neuron", sparsity=0.5), export_example=x, progress=False)
    checks = {c["name"]: c["passed"] for c in removed.report.stages[0].checks}
    assert checks["removed equals masked"] and checks["parameters removed"]
    assert removed.model.blocks[0]["mlp"][0].out_features == 16


class _Mixer(_UserAttention):
    """The same computation under names no family uses (a, b, c, d) and a class name without "Attention"."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = self.wq, self.wk, self.wv, self.wo
        del self.wq, self.wk, self.wv, self.wo

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.n_heads, -1).transpose(1, 2) for f in (self.a, self.b, self.c))
        out = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
        return self.d(out.transpose(1, 2).reshape(b, n, -1))


def test_a_declared_structure_is_what_pruning_uses():
    from unicompress.api import compress
    from unicompress.errors import StructureError
    from unicompress.specs import StructureDeclaration

    model = _UserModel(names=("mix", "ff")).eval()
    for blk in model.blocks:
        blk["mix"] = _Mixer()
    x = np.random.default_rng(0).normal(size=(3, 5, 16)).astype(np.float32)
    assert A.structure(model) is None  # nothing tells these Linears apart: the roles fall back to names
    spec = PruningSpec(granularity="head", sparsity=0.5, remove_pruned=False)
    with pytest.raises(StructureError, match="declare it in the recipe"):
        compress(model, spec, export_example=x, progress=False)
    declared = StructureDeclaration(num_heads=4, roles={"*.mix.a": "query", "*.mix.b": "key", "*.mix.c": "value",
                                                        "*.mix.d": "attention_output"})
    result = compress(model, spec, export_example=x, progress=False, structure=declared)
    assert all(c["passed"] for c in result.report.stages[0].checks)
    w = A.weights(result.model)
    for i in range(2):
        kept = (w[f"blocks.{i}.mix.a"] != 0).reshape(4, -1).any(axis=1)
        assert kept.sum() == 2
        np.testing.assert_array_equal((w[f"blocks.{i}.mix.d"] != 0).reshape(16, 4, 4).any(axis=(0, 2)), kept)
    assert (w["blocks.0.ff.0"] != 0).all()  # only the declared attention was pruned
