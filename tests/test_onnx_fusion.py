"""ONNX Runtime's transformer fusions (unicompress.onnx.fusion) and the passes that prepare exports for them
(passes.collapse_tensordot, passes.canonical_attention_mask): the onnx backend's tiny-bert graph (no framework),
hand-built graphs in the shapes tf2onnx and paddle2onnx write, and ONNX Runtime runs before and after."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from unicompress import zoo  # noqa: E402
from unicompress.onnx import passes  # noqa: E402
from unicompress.onnx.fusion import (FUSION_TOLERANCE, FusionError, fuse_file, fuse_transformer,  # noqa: E402
                                     fusion_heads, quantize_fused_dynamic)
from unicompress.onnx.runtime import run_onnx  # noqa: E402

CFG = zoo.config_for("tiny-bert")


def _tiny_bert() -> onnx.ModelProto:
    from unicompress.backend import get_backend

    return get_backend("onnx").build_model("tiny-bert", seed=0)


def _padded(seed: int = 7) -> dict[str, np.ndarray]:
    x = zoo.inputs_for("tiny-bert", CFG, batch=4, length=12, seed=seed)
    x["attention_mask"][:, 8:] = 0
    return x


def _ops(proto) -> Counter:
    return Counter(n.op_type for n in proto.graph.node)


def test_fuse_transformer_fuses_the_onnx_backends_tiny_bert_and_keeps_its_outputs(tmp_path):
    proto = _tiny_bert()
    copy = proto.SerializeToString()
    fused, report = fuse_transformer(proto, *_heads())
    assert proto.SerializeToString() == copy  # the caller's proto is not modified
    ops = _ops(fused)
    # the onnx backend adds the embeddings then normalises them: a SkipLayerNorm, not EmbedLayerNormalization
    assert (ops["Attention"], ops["SkipLayerNormalization"], ops["BiasGelu"], ops["Softmax"]) == (2, 5, 2, 0)
    assert report.counts == {"Attention": 2, "SkipLayerNormalization": 5, "BiasGelu": 2}
    assert report.passes["canonical_attention_mask"] == 2  # its mask chain was rewritten into ORT's order
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    onnx.save(fused, str(tmp_path / "fused.onnx"))
    x = _padded()
    plain, out = run_onnx(tmp_path / "plain.onnx", x), run_onnx(tmp_path / "fused.onnx", x)
    diff = float(np.abs(out - plain).max())
    assert diff <= FUSION_TOLERANCE * float(np.abs(plain).max())
    # the padding mask reaches the fused Attention: without it both graphs move alike, by far more than they differ
    full = {**x, "attention_mask": np.ones_like(x["attention_mask"])}
    moved = run_onnx(tmp_path / "plain.onnx", full) - plain
    assert float(np.abs(moved).max()) > 100 * diff
    np.testing.assert_allclose(run_onnx(tmp_path / "fused.onnx", full) - out, moved, atol=10 * diff + 1e-9)


def _heads() -> tuple[int, int]:
    return CFG.num_attention_heads, CFG.hidden_size


def test_fuse_file_rewrites_atomically_and_refuses_outputs_beyond_the_tolerance(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_tiny_bert(), str(path))
    original = path.read_bytes()
    x = _padded()
    with pytest.raises(FusionError, match="beyond the tolerance"):  # fused kernels differ by ~1e-7 of the logits
        fuse_file(path, *_heads(), x, tolerance=1e-12)
    assert path.read_bytes() == original and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    report = fuse_file(path, *_heads(), x)
    assert report.counts["Attention"] == 2 and report.output_max_abs <= 1e-5 * 1e-3 + FUSION_TOLERANCE
    assert report.file_bytes_before == len(original) and report.file_bytes_after == path.stat().st_size
    assert _ops(onnx.load(str(path)))["Attention"] == 2
    assert report.summary().startswith("optimize ort-transformers: Attention 2, SkipLayerNormalization 5, "
                                       "BiasGelu 2 (num_heads 4, hidden 32")


def test_fusion_needs_attention_heads():
    with pytest.raises(FusionError, match="no Transformer structure"):
        fusion_heads(None)
    with pytest.raises(FusionError, match="multiple of the head count"):
        fuse_transformer(_tiny_bert(), 3, 32)


def test_compress_refuses_optimize_before_work_without_a_structure(tmp_path):
    import unicompress as uc

    model = _tiny_bert()  # the onnx backend discovers no TransformerStructure
    before = model.SerializeToString()
    recipe = {"name": "tiny", "backend": "onnx", "evaluate": False,
              "stages": [{"technique": "pruning", "granularity": "unstructured", "sparsity": 0.5}],
              "export": {"directory": str(tmp_path / "out"), "formats": ["onnx"], "optimize": "ort-transformers"}}
    with pytest.raises(FusionError, match="no Transformer structure was found"):
        uc.compress(model, recipe, progress=False, export_example=_padded())
    assert model.SerializeToString() == before and not (tmp_path / "out" / "tiny.onnx").exists()


def test_export_spec_optimize_field():
    from unicompress.specs.recipe import ExportSpec

    assert ExportSpec().optimize == "none"
    assert ExportSpec(optimize="ort-transformers").optimize == "ort-transformers"
    with pytest.raises(ValueError, match="writes none"):
        ExportSpec(formats=["native"], optimize="ort-transformers")
    with pytest.raises(ValueError):
        ExportSpec(optimize="tensorrt")


def test_quantize_fused_dynamic_gives_integer_attention(tmp_path):
    fused, _ = fuse_transformer(_tiny_bert(), *_heads())
    onnx.save(fused, str(tmp_path / "fused.onnx"))
    out = quantize_fused_dynamic(tmp_path / "fused.onnx", tmp_path / "int8.onnx")
    ops = _ops(onnx.load(str(out)))
    assert ops["QAttention"] == 2 and ops["MatMulInteger"] >= 4 and ops["Attention"] == 0
    x = _padded()
    ref = run_onnx(tmp_path / "fused.onnx", x)
    rel = float(np.linalg.norm(run_onnx(out, x) - ref) / np.linalg.norm(ref))
    assert rel < 0.05, rel  # int8 weights and activations: a few percent of the logits


# --- the preparing passes on hand-built graphs --------------------------------------------------------------

def _model(nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _tensordot(gather_indices=(0, 1)):
    """tf2onnx's Keras Dense on [b, s, 8]: Reshape([-1, 8]) -> MatMul(W [8, 6]) -> Reshape(Shape(x)[:2] + [6]),
    shape tensors cast to int32 and back as tf2onnx writes them, then the bias Add."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 6)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "bias"),
             _i64("flat", [-1, 8]), numpy_helper.from_array(np.array(gather_indices, np.int32), "free"),
             numpy_helper.from_array(np.array([6], np.int32), "n")]
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["x2"]),
             helper.make_node("MatMul", ["x2", "W"], ["y2"]),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Cast", ["shape"], ["shape32"], to=TensorProto.INT32),
             helper.make_node("Gather", ["shape32", "free"], ["lead"], axis=0),
             helper.make_node("Concat", ["lead", "n"], ["target32"], axis=0),
             helper.make_node("Cast", ["target32"], ["target"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["y2", "target"], ["y"]),
             helper.make_node("Add", ["y", "bias"], ["out"])]
    return _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 8])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", 6])])


def test_collapse_tensordot_leaves_one_matmul_feeding_the_bias_add(tmp_path):
    proto = _tensordot()
    x = {"x": np.random.default_rng(1).normal(size=(2, 5, 8)).astype(np.float32)}
    onnx.save(proto, str(tmp_path / "a.onnx"))
    before = run_onnx(tmp_path / "a.onnx", x)
    assert passes.collapse_tensordot(proto) == 1
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node] == ["MatMul", "Add"]
    assert proto.graph.node[0].input[0] == "x" and proto.graph.node[1].input[0] == proto.graph.node[0].output[0]
    onnx.save(proto, str(tmp_path / "b.onnx"))
    np.testing.assert_allclose(run_onnx(tmp_path / "b.onnx", x), before, rtol=1e-6, atol=1e-6)


def test_collapse_tensordot_leaves_other_target_shapes_alone():
    proto = _tensordot(gather_indices=(0,))  # Reshape to [b, 6 * ...]: not x's leading axes
    assert passes.collapse_tensordot(proto) == 0 and len(proto.graph.node) == 9


def _masked_attention(form: str, scale_by_mul: bool = True, shift: float = 1.0):
    """Scores [b, 2, s, s] + mask bias -> Softmax, the bias written as tf2onnx does (Cast, Sub(shift, .), Mul(c),
    Unsqueeze, Unsqueeze) or as paddle2onnx does (Cast, Identity, Mul(-1), Add(shift), Mul(c), Add(0),
    Unsqueeze([1, 2]), with Identity-wrapped constants)."""
    f32 = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    inits = [f32("scale", 0.5), f32("c", -1e9), f32("one", shift)]
    nodes = [helper.make_node("Mul" if scale_by_mul else "Div", ["qk", "scale"], ["scaled"]),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT)]
    if form == "tf":
        inits += [_i64("ax1", [1])]
        nodes += [helper.make_node("Sub", ["one", "m"], ["inv"]),
                  helper.make_node("Mul", ["inv", "c"], ["bias2"]),
                  helper.make_node("Unsqueeze", ["bias2", "ax1"], ["bias3"]),
                  helper.make_node("Unsqueeze", ["bias3", "ax1"], ["bias"])]
    else:
        inits += [numpy_helper.from_array(np.array([-1.0], np.float32), "neg"), f32("zero", 0.0), _i64("ax12", [1, 2])]
        nodes += [helper.make_node("Identity", ["m"], ["m_id"]),
                  helper.make_node("Identity", ["neg"], ["neg_id"]),
                  helper.make_node("Mul", ["m_id", "neg_id"], ["negm"]),
                  helper.make_node("Add", ["negm", "one"], ["inv"]),
                  helper.make_node("Mul", ["inv", "c"], ["big"]),
                  helper.make_node("Add", ["big", "zero"], ["bias2"]),
                  helper.make_node("Unsqueeze", ["bias2", "ax12"], ["bias"])]
    nodes += [helper.make_node("Add", ["scaled", "bias"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["probs"], axis=-1)]
    return _model(nodes, inits, [helper.make_tensor_value_info("qk", TensorProto.FLOAT, ["b", 2, "s", "s"]),
                                 helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", "s"])],
                  [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["b", 2, "s", "s"])])


@pytest.mark.parametrize("form", ["tf", "paddle"])
def test_canonical_attention_mask_writes_the_order_ort_matches(tmp_path, form):
    proto = _masked_attention(form)
    rng = np.random.default_rng(2)
    mask = np.ones((3, 5), np.int64)
    mask[:, 3:] = 0
    x = {"qk": rng.normal(size=(3, 2, 5, 5)).astype(np.float32), "mask": mask}
    onnx.save(proto, str(tmp_path / "a.onnx"))
    before = run_onnx(tmp_path / "a.onnx", x)
    assert passes.canonical_attention_mask(proto) == 1
    onnx.checker.check_model(proto, full_check=True)
    producer = {o: n for n in proto.graph.node for o in n.output}
    add = next(n for n in proto.graph.node if n.output[0] == "scores")
    chain, name = [], add.input[1]
    while name in producer:
        chain.append(producer[name].op_type)
        name = producer[name].input[1] if producer[name].op_type == "Sub" else producer[name].input[0]
    assert chain == ["Mul", "Sub", "Cast", "Unsqueeze", "Unsqueeze"] and name == "mask"
    assert producer[add.input[0]].op_type == "Div"  # the Mul scale would hide the mask Mul from ORT
    onnx.save(proto, str(tmp_path / "b.onnx"))
    after = run_onnx(tmp_path / "b.onnx", x)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)
    assert np.abs(after[..., 3:]).max() == 0.0  # padded keys still get no weight


def test_canonical_attention_mask_leaves_other_biases_alone():
    proto = _masked_attention("tf", shift=2.0)  # (2 - m) * c is no padding mask
    assert passes.canonical_attention_mask(proto) == 0
    assert [n.op_type for n in proto.graph.node][0] == "Mul"
