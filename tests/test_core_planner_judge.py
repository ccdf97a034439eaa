"""The planner (what a stage touches, refusals before work) and the per-run judge, on a numpy Transformer."""
from __future__ import annotations

import numpy as np
import pytest
from numpy_transformer import NumpyTransformer, NumpyTransformerAdapter, probe

import unicompress as uc
from unicompress.backend import register, unregister
from unicompress.backend.types import AttentionInfo, FFNInfo, LayerInfo, TaskData, TransformerStructure
from unicompress.errors import JudgeError, LayerSelectionError, SpecValidationError, StructureError
from unicompress.planner import layer_settings, plan_stage
from unicompress.record import data_fingerprint, recipe_hash, weights_hash
from unicompress.specs import LayerRole, PruningSpec, QuantizationSpec, StructureDeclaration
from unicompress.structure import assign_roles, declared_structure


@pytest.fixture
def backend():
    def use(mutation: str = ""):
        register("numpy-transformer", lambda: NumpyTransformerAdapter(mutation), replace=True)
        return "numpy-transformer"
    yield use
    unregister("numpy-transformer")


def run(backend_name, **fields):
    return uc.compress(NumpyTransformer(), PruningSpec(**fields), backend=backend_name, progress=False,
                       export_example=probe())


def checks_of(result):
    return {c["name"]: c for s in result.report.stages for c in s.checks}


# ---- roles: the structure decides, names are the fallback ------------------------------------------------
def test_structure_roles_override_lookalike_names():
    layers = [LayerInfo("enc.0.attn.q", "linear", LayerRole.query, (8, 8)),
              LayerInfo("enc.0.attn.o", "linear", LayerRole.attention_output, (8, 8)),
              LayerInfo("classifier.dense", "linear", LayerRole.other, (8, 8)),
              LayerInfo("classifier.out_proj", "linear", LayerRole.attention_output, (3, 8))]
    st = TransformerStructure(8, 1, (AttentionInfo(0, "enc.0.attn.q", "enc.0.attn.q", "enc.0.attn.q",
                                                   "enc.0.attn.o", 2, 4),),
                              classifier="classifier.out_proj", pooler=("classifier.dense",))
    roles = {layer.name: layer.role for layer in assign_roles(layers, st)}
    assert roles == {"enc.0.attn.q": LayerRole.qkv, "enc.0.attn.o": LayerRole.attention_output,
                     "classifier.dense": LayerRole.pooler, "classifier.out_proj": LayerRole.classifier}
    lookalike = LayerInfo("adapter.out_proj", "linear", LayerRole.attention_output, (8, 8))
    assert assign_roles([lookalike], st)[0].role is LayerRole.other  # not in the structure: no attention role
    assert assign_roles([lookalike], None)[0].role is LayerRole.attention_output  # no structure: names stand
    unnamed = TransformerStructure(8, 1, st.attention)  # no classifier named: the last Linear after the blocks
    tail = assign_roles(layers[:2] + [LayerInfo("proj", "linear", LayerRole.other, (8, 8)),
                                      LayerInfo("out", "linear", LayerRole.other, (3, 8))], unnamed)
    assert [la.role for la in tail[2:]] == [LayerRole.other, LayerRole.classifier]


# ---- declared structure ---------------------------------------------------------------------------------------
def _layers():
    out = [LayerInfo(f"enc.{i}.{n}", "linear", LayerRole.other, s) for i in range(2)
           for n, s in [("wq", (8, 8)), ("wk", (8, 8)), ("wv", (8, 8)), ("wo", (8, 8)), ("up", (16, 8)), ("down", (8, 16))]]
    return out + [LayerInfo("head", "linear", LayerRole.other, (3, 8))]


ROLES = {"*.wq": "query", "*.wk": "key", "*.wv": "value", "*.wo": "attention_output", "*.up": "ffn_in",
         "*.down": "ffn_out"}


def test_declared_structure_groups_blocks_by_name():
    st = declared_structure(StructureDeclaration(num_heads=2, roles=ROLES, classifier="head"), _layers())
    assert [(a.block, a.query, a.num_heads, a.head_dim, a.removable) for a in st.attention] == \
        [(0, "enc.0.wq", 2, 4, False), (1, "enc.1.wq", 2, 4, False)]
    assert [(f.block, f.ffn_in, f.ffn_out) for f in st.ffn] == [(0, "enc.0.up", "enc.0.down"), (1, "enc.1.up", "enc.1.down")]
    assert st.classifier == "head" and st.source == "declared" and st.hidden_size == 8


@pytest.mark.parametrize("decl, message", [
    (dict(num_heads=2, roles={**ROLES, "*.nope": "query"}), "matches no layer"),
    (dict(num_heads=3, roles=ROLES), "not divisible by num_heads=3"),
    (dict(num_heads=2, roles={k: v for k, v in ROLES.items() if v != "attention_output"}), "attention_output"),
    (dict(roles=ROLES), "needs num_heads"),
    (dict(num_heads=2, roles=ROLES, classifier="missing"), "no layer named 'missing'"),
])
def test_declared_structure_that_does_not_fit_is_refused(decl, message):
    with pytest.raises(StructureError, match=message):
        declared_structure(StructureDeclaration(**decl), _layers())


# ---- planner refusals: before any work, the same for every backend ------------------------------------------
class NoStructure(NumpyTransformerAdapter):
    def structure(self, model):
        return None


class Unremovable(NumpyTransformerAdapter):
    def structure(self, model):
        st = super().structure(model)
        return TransformerStructure(st.hidden_size, 1, (AttentionInfo(0, "attn.wq", "attn.wk", "attn.wv", "attn.wo",
                                                                      4, 2, removable=False, note="shared weights"),),
                                    (FFNInfo(0, "mlp.up", "mlp.down", removable=False, note="tied"),), "head")


def test_structural_spec_without_structure_is_refused_with_how_to_declare():
    with pytest.raises(StructureError, match="(?s)no Transformer structure was found.*structure:"):
        plan_stage(NoStructure(), NumpyTransformer(), PruningSpec(granularity="head", sparsity=0.5))


def test_declared_structure_lets_a_model_without_discovery_be_planned(backend):
    decl = StructureDeclaration(num_heads=4, roles={"attn.wq": "query", "attn.wk": "key", "attn.wv": "value",
                                                    "attn.wo": "attention_output", "mlp.up": "ffn_in",
                                                    "mlp.down": "ffn_out"})
    register("numpy-transformer", NoStructure, replace=True)
    result = uc.compress(NumpyTransformer(), PruningSpec(granularity="neuron", sparsity=0.5), backend="numpy-transformer",
                         progress=False, export_example=probe(), structure=decl)
    assert result.model.weights["mlp.up"].shape == (8, 8)
    assert checks_of(result)["removed equals masked"]["passed"] is True
    with pytest.raises(StructureError, match="(?s)cannot be physically removed.*declared"):  # declared heads: masked only
        uc.compress(NumpyTransformer(), PruningSpec(granularity="head", sparsity=0.5), backend="numpy-transformer",
                    progress=False, structure=decl)


def test_a_partial_declaration_keeps_what_discovery_found():
    decl = StructureDeclaration(roles={"mlp.up": "ffn_in", "mlp.down": "ffn_out"})
    adapter = NumpyTransformerAdapter()
    st = declared_structure(decl, adapter.layers(NumpyTransformer()), adapter.structure(NumpyTransformer()))
    assert [a.query for a in st.attention] == ["attn.wq"] and st.attention[0].removable  # discovered, kept
    assert [(f.ffn_in, f.ffn_out) for f in st.ffn] == [("mlp.up", "mlp.down")] and st.source == "declared"


class AttentionOnly(NumpyTransformerAdapter):
    def structure(self, model):
        st = super().structure(model)
        return TransformerStructure(st.hidden_size, 1, st.attention, (), classifier="head")


def test_lone_linears_lose_rows_and_the_judge_says_what_it_could_not_check(backend):
    register("numpy-transformer", AttentionOnly, replace=True)
    result = uc.compress(NumpyTransformer(), PruningSpec(granularity="neuron", sparsity=0.5),
                         backend="numpy-transformer", progress=False, export_example=probe())
    stage = result.report.stages[0]
    assert stage.plan["rows"] == ["mlp.up", "mlp.down"] and stage.plan["ffn_pairs"] == 0
    assert any("zeroed, not removed" in n for n in stage.plan["notes"])
    checks = checks_of(result)
    assert checks["neurons pruned"]["passed"] is True and "2 lone layer(s) zeroed" in checks["neurons pruned"]["figure"]
    assert "parameters removed" not in checks  # nothing is removed from lone Linears
    assert result.report.after.params == result.report.before.params


def test_removal_of_unremovable_blocks_is_refused_with_the_note():
    with pytest.raises(StructureError, match="shared weights"):
        plan_stage(Unremovable(), NumpyTransformer(), PruningSpec(granularity="head", sparsity=0.5))
    with pytest.raises(StructureError, match="tied"):
        plan_stage(Unremovable(), NumpyTransformer(), PruningSpec(granularity="neuron", sparsity=0.5))
    plan = plan_stage(Unremovable(), NumpyTransformer(), PruningSpec(granularity="head", sparsity=0.5,
                                                                      remove_pruned=False))
    assert [a.block for a in plan.attention] == [0]


@pytest.mark.parametrize("fields, path", [
    (dict(granularity="n_m", n=2, m=16), "stages[0].m"),  # 8-wide layers
    (dict(granularity="block", sparsity=0.5, block_shape=(4, 32)), "stages[0].block_shape"),
    (dict(granularity="head", sparsity=0.9), "stages[0].sparsity"),  # 4 heads: 0.9 removes all four
])
def test_shape_refusals_name_the_field(fields, path):
    with pytest.raises(SpecValidationError) as err:
        plan_stage(NumpyTransformerAdapter(), NumpyTransformer(), PruningSpec(**fields))
    assert err.value.problems[0].path == path


def test_selected_layers_of_a_kind_the_backend_cannot_change_are_refused_or_listed():
    class WithEmbedding(NumpyTransformerAdapter):
        def layers(self, model):
            return super().layers(model) + [LayerInfo("tok", "embedding", LayerRole.embedding, (10, 8))]
    spec = PruningSpec(sparsity=0.5, selector={"roles": ["embedding", "ffn_in"]})
    with pytest.raises(LayerSelectionError, match="(?s)tok: layer kind 'embedding'.*allow_partial"):
        plan_stage(WithEmbedding(), NumpyTransformer(), spec)
    partial = PruningSpec(sparsity=0.5, selector={"roles": ["embedding", "ffn_in"], "allow_partial": True})
    plan = plan_stage(WithEmbedding(), NumpyTransformer(), partial)
    assert plan.selected == ("mlp.up",) and plan.skipped[0][0] == "tok"
    only = PruningSpec(sparsity=0.5, selector={"roles": ["embedding"], "allow_partial": True})
    with pytest.raises(LayerSelectionError, match="(?s)none of which backend .* can change.*tok"):
        plan_stage(WithEmbedding(), NumpyTransformer(), only)  # a stage that would change nothing is refused


def test_head_plan_lists_the_layers_it_leaves_alone():
    plan = plan_stage(NumpyTransformerAdapter(), NumpyTransformer(), PruningSpec(granularity="head", sparsity=0.5))
    assert plan.selected == ("attn.wq", "attn.wk", "attn.wv", "attn.wo")
    assert {n for n, _ in plan.skipped} == {"mlp.up", "mlp.down"}  # the default selector's FFN layers
    assert "head" not in plan.selected  # the classifier is never in a default plan


def test_one_override_rule_later_fields_win_and_any_skip_wins():
    spec = QuantizationSpec(mode="weight_only", bits=8, overrides=[
        {"pattern": "*", "bits": 4}, {"pattern": "*.key", "bits": 6, "granularity": "per_tensor"},
        {"pattern": "*.value", "skip": True}, {"pattern": "l0.*", "scheme": "asymmetric"}])
    assert layer_settings(spec, "l0.key") == {"skip": False, "bits": 6, "granularity": "per_tensor",
                                              "scheme": "asymmetric"}
    assert layer_settings(spec, "l0.value")["skip"] is True
    assert layer_settings(spec, "l1.query") == {"skip": False, "bits": 4, "granularity": spec.granularity,
                                                "scheme": spec.scheme}


# ---- the judge: every run checks itself -------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["head", "neuron"])
def test_removal_shrinks_the_model_and_equals_the_masked_one(backend, granularity):
    result = run(backend(), granularity=granularity, sparsity=0.5)
    checks = checks_of(result)
    assert all(c["passed"] is True for c in checks.values()), checks
    assert "max |removed - masked|" in checks["removed equals masked"]["figure"]
    before, after = result.report.before.params, result.report.after.params
    per_unit = 2 * (3 * 2 * 8 + 8 * 2) if granularity == "head" else 8 * (8 + 8)  # 2 heads of d=2 / 8 neurons
    assert before - after == per_unit
    assert "Checks (the per-run judge)" in result.report.to_markdown()


def test_unstructured_reaches_the_target_on_every_planned_layer(backend):
    result = run(backend(), sparsity=0.5)
    check = checks_of(result)["sparsity"]
    assert check["passed"] is True and "on 6/6 planned layers" in check["figure"]
    assert result.report.layers_after[-1].sparsity == 0  # the classifier head is not in the default plan


@pytest.mark.parametrize("mutation, fields, failing", [
    ("skip_attention", dict(sparsity=0.5), "sparsity"),
    ("unpaired", dict(granularity="neuron", sparsity=0.5, remove_pruned=False), "neurons pruned"),
    ("wrong_axis", dict(granularity="neuron", sparsity=0.5, remove_pruned=False), "neurons pruned"),
    ("no_removal", dict(granularity="neuron", sparsity=0.5), "neurons pruned"),
    ("no_removal", dict(granularity="head", sparsity=0.5), "heads pruned"),
    ("removes_wrong_columns", dict(granularity="neuron", sparsity=0.5), "removed equals masked"),
])
def test_a_broken_stage_is_caught_and_the_input_is_untouched(backend, mutation, fields, failing):
    model = NumpyTransformer()
    before = {k: v.copy() for k, v in model.weights.items()}
    with pytest.raises(JudgeError) as err:
        uc.compress(model, PruningSpec(**fields), backend=backend(mutation), progress=False, export_example=probe())
    failed = [c.name for c in err.value.checks if c.passed is False]
    assert failing in failed, str(err.value)
    assert all(np.array_equal(before[k], model.weights[k]) for k in before)


def test_without_inputs_the_output_checks_say_so(backend):
    result = uc.compress(NumpyTransformer(), PruningSpec(granularity="neuron", sparsity=0.5), backend=backend(),
                         progress=False)
    checks = checks_of(result)
    assert checks["removed equals masked"]["passed"] is None and checks["parameters removed"]["passed"] is True


# ---- the reproducibility record -----------------------------------------------------------------------------
def test_report_carries_a_reproducibility_record(backend):
    x = probe()
    data = TaskData(train=lambda: iter([(x, np.zeros(len(x), np.int64))]), num_labels=3)
    result = uc.compress(NumpyTransformer(), PruningSpec(sparsity=0.5), data, backend=backend(), progress=False)
    record = result.report.record
    assert record["input_weights_sha256"] == weights_hash(NumpyTransformerAdapter().weights(NumpyTransformer()))
    assert record["recipe_sha256"] == recipe_hash(record["recipe"]) and len(record["recipe_sha256"]) == 64
    assert record["seeds"] == {"seed": 0}
    assert record["versions"]["unicompress"] == uc.__version__ and record["versions"]["python"]
    assert record["data"]["train"]["batches_hashed"] == 1 and record["machine"]["cores"] >= 1
    md = result.report.to_markdown()
    assert "## Reproducibility" in md and record["input_weights_sha256"] in md
    assert result.report.to_dict()["record"]["recipe_sha256"] == record["recipe_sha256"]


def test_fingerprints_change_with_the_data_and_weights():
    a = TaskData(calibration=lambda: iter([np.ones((2, 3), np.float32)]))
    b = TaskData(calibration=lambda: iter([np.zeros((2, 3), np.float32)]))
    assert data_fingerprint(a)["calibration"]["sha256_first_batches"] != \
        data_fingerprint(b)["calibration"]["sha256_first_batches"]
    assert weights_hash({"w": np.ones(3)}) != weights_hash({"w": np.zeros(3)})


# ---- validate --plan: the planner without compressing ----------------------------------------------------------
def test_cli_validate_plan_prints_what_each_stage_touches_and_refuses_like_run(backend, tmp_path, capsys):
    from unicompress.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("backend: numpy-transformer\nmodel: {factory: 'numpy_transformer:build'}\nstages:\n"
                      "  - {technique: pruning, granularity: head, sparsity: 0.5}\n"
                      "  - {technique: pruning, granularity: neuron, sparsity: 0.5, selector: {roles: [ffn_in]}}\n")
    backend()
    assert main(["validate", str(recipe), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "structure: numpy:block (discovered): 1 attention block(s)" in out
    assert "stage 0 pruning: 4 layer(s), 1 attention block(s); left alone: 2" in out
    assert "stage 1 pruning: 2 layer(s), 1 FFN pair(s)" in out
    recipe.write_text("backend: numpy-transformer\nmodel: {factory: 'numpy_transformer:build'}\nstages:\n"
                      "  - {technique: pruning, granularity: head, sparsity: 0.9}\n")  # 4 heads: none left
    assert main(["validate", str(recipe), "--plan"]) == 2
    assert "stages[0].sparsity" in capsys.readouterr().err
