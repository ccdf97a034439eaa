"""Integer embedding tables in ONNX files (unicompress.onnx.embeddings), on hand-built graphs run by ONNX Runtime;
the ExportSpec field and compress()'s export step with a numpy test backend that writes real ONNX graphs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import unicompress as uc
from unicompress.backend import LayerInfo, register, unregister
from unicompress.backend.types import TaskData
from unicompress.errors import ExportError, SpecValidationError
from unicompress.fileio import atomic_write_bytes
from unicompress.onnx.embeddings import (DEFAULT_MIN_ELEMENTS, INT4_BLOCK, EmbeddingError, quantize_embeddings,
                                         quantize_embeddings_file, require_tables)
from unicompress.onnx.runtime import run_onnx
from unicompress.recipe_io import validate_data
from unicompress.specs import LayerRole

from numpy_adapter import NumpyAdapter, NumpyMLP

ROWS, DIM = 256, 32  # 8192 elements: above the default min_elements


def _table(rows=ROWS, dim=DIM, seed=0, dtype=np.float32):
    t = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    t[3] = 0.0  # an all-zero row: scale 1, integers 0
    return t.astype(dtype)


def _ids(rows=ROWS, batch=2, seq=7, seed=1):
    return np.random.default_rng(seed).integers(0, rows, size=(batch, seq)).astype(np.int64)


def _model(table, tied=False, through=None, small=None, opset=17):
    """ids -> Gather(table) -> "emb" (+ a small position table) [-> MatMul(emb, Transpose(table)) "logits"]."""
    elem = helper.np_dtype_to_tensor_dtype(table.dtype)
    inits = [numpy_helper.from_array(table, "word.weight")]
    nodes, src = [], "word.weight"
    if through is not None:  # what a float exporter may put between the initializer and the Gather
        kw = {"to": elem} if through == "Cast" else {}
        nodes.append(helper.make_node(through, ["word.weight"], ["word.view"], name="view", **kw))
        src = "word.view"
    nodes.append(helper.make_node("Gather", [src, "ids"], ["emb" if small is None else "tok"], name="word/Gather"))
    if small is not None:
        inits.append(numpy_helper.from_array(small, "pos.weight"))
        inits.append(numpy_helper.from_array(np.zeros((1, 1), np.int64), "pos.ids"))
        nodes += [helper.make_node("Gather", ["pos.weight", "pos.ids"], ["pos"], name="pos/Gather"),
                  helper.make_node("Add", ["tok", "pos"], ["emb"], name="add")]
    outputs = [helper.make_tensor_value_info("emb", elem, ["b", "s", table.shape[1]])]
    if tied:
        nodes += [helper.make_node("Transpose", ["word.weight"], ["word.T"], name="head/T", perm=[1, 0]),
                  helper.make_node("MatMul", ["emb", "word.T"], ["logits"], name="head/MatMul")]
        outputs.insert(0, helper.make_tensor_value_info("logits", elem, ["b", "s", table.shape[0]]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _inits(proto):
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def _reference_int8(table):
    """Per-row symmetric int8, written out independently of the module."""
    t = table.astype(np.float64)
    scale = np.abs(t).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(t / scale[:, None]), -127, 127).astype(np.int8), scale.astype(np.float32)


def _save(proto, path):
    onnx.save(proto, str(path))
    return path


def test_int8_gather_and_tied_matmul_are_exact_and_within_the_bound(tmp_path):
    table, ids = _table(), _ids()
    path = _save(_model(table, tied=True), tmp_path / "m.onnx")
    float_emb, float_logits = (run_onnx(path, {"ids": ids}, output=o) for o in ("emb", "logits"))
    size = path.stat().st_size
    report = quantize_embeddings_file(path, "int8", example={"ids": ids})
    proto = onnx.load(str(path))
    inits = _inits(proto)
    q, scale = _reference_int8(table)
    ints = [v for v in inits.values() if v.dtype == np.int8 and v.shape == (ROWS, DIM)]
    assert len(ints) == 1 and np.array_equal(ints[0], q)  # one int8 copy, bit-exact
    assert not [v for v in inits.values() if v.dtype == np.float32 and v.shape == (ROWS, DIM)]  # float gone
    np.testing.assert_allclose(inits["word.weight_scale"].ravel(), scale, rtol=1e-6)
    assert inits["word.weight_scale"].shape == (ROWS, 1)
    ops = [n.op_type for n in proto.graph.node]
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert ops.count("Gather") == 2 and len(dq) == 1 and dq[0].input[0] == "word.weight_int8"
    assert dq[0].attribute[0].name == "axis" and dq[0].attribute[0].i == 0
    (t,) = report.tables
    assert (t.name, t.shape, t.form, t.gathers, t.tied) == ("word.weight", (ROWS, DIM), "int8", 1, 1)
    assert t.bytes_before == ROWS * DIM * 4 and t.bytes_after == ROWS * DIM + 2 * ROWS * 4 + ROWS
    deq = q.astype(np.float32) * scale[:, None]
    assert t.max_abs_error == pytest.approx(float(np.abs(deq - table).max()), rel=1e-6)
    assert t.max_abs_error <= scale.max() / 2 + 1e-7
    # ORT: the embeddings within half a step of their row; the tied logits within the propagated bound
    emb, logits = (run_onnx(path, {"ids": ids}, output=o) for o in ("emb", "logits"))
    np.testing.assert_allclose(emb, deq[ids], atol=1e-6)
    assert np.all(np.abs(emb - float_emb) <= scale[ids][..., None] / 2 + 1e-6)
    bound = scale[ids][..., None] / 2 * np.abs(deq).sum(1) + np.abs(float_emb).sum(-1, keepdims=True) * scale / 2
    assert np.all(np.abs(logits - float_logits) <= bound + 1e-5)
    assert report.output_max_abs == pytest.approx(float(np.abs(logits - float_logits).max()), rel=1e-5)
    drop = size - path.stat().st_size
    assert report.file_bytes_before - report.file_bytes_after == drop
    assert 0.75 * t.bytes_before - (t.bytes_after - ROWS * DIM) - 1500 <= drop <= 0.75 * t.bytes_before
    assert "word.weight 256x32 int8" in report.summary() and "tied" in report.summary()


@pytest.mark.parametrize("through", ["Identity", "Cast"])
def test_tables_reached_through_identity_or_cast_and_small_tables(tmp_path, through):
    table, small, ids = _table(), _table(8, DIM, seed=2), _ids()
    proto = _model(table, through=through, small=small)
    before = run_onnx(_save(proto, tmp_path / "f.onnx"), {"ids": ids})
    report = quantize_embeddings(proto)
    assert [t.name for t in report.tables] == ["word.weight"]
    assert report.skipped == [("pos.weight", f"8x32 = 256 elements < min_elements {DEFAULT_MIN_ELEMENTS}")]
    assert "view" not in [n.name for n in proto.graph.node]  # the view fed only the Gather: gone
    inits = _inits(proto)
    assert "word.weight" not in inits and inits["pos.weight"].dtype == np.float32
    after = run_onnx(_save(proto, tmp_path / "q.onnx"), {"ids": ids})
    assert np.abs(after - before).max() <= report.tables[0].max_abs_error + 1e-6
    both = quantize_embeddings(_model(table, small=small), min_elements=1)  # asked: the small table too
    assert sorted(t.name for t in both.tables) == ["pos.weight", "word.weight"] and not both.skipped


def test_float16_table_keeps_its_output_type(tmp_path):
    table, ids = _table(dtype=np.float16), _ids()
    proto = _model(table)
    before = run_onnx(_save(proto, tmp_path / "f.onnx"), {"ids": ids})
    report = quantize_embeddings(proto)
    after = run_onnx(_save(proto, tmp_path / "q.onnx"), {"ids": ids})
    assert after.dtype == np.float16 and report.tables[0].bytes_before == ROWS * DIM * 2
    assert np.abs(after.astype(np.float32) - before.astype(np.float32)).max() <= \
        report.tables[0].max_abs_error + 2e-3  # + one float16 rounding of values below 8


def test_int4_gather_block_quantized_runs_in_onnx_runtime(tmp_path):
    table, ids = _table(), _ids()
    path = _save(_model(table), tmp_path / "m.onnx")
    before = run_onnx(path, {"ids": ids})
    report = quantize_embeddings_file(path, "int4", example={"ids": ids})
    proto = onnx.load(str(path))
    (node,) = [n for n in proto.graph.node if n.op_type == "GatherBlockQuantized"]
    attrs = {a.name: a.i for a in node.attribute}
    assert node.domain == "com.microsoft" and attrs == {"bits": 4, "block_size": INT4_BLOCK, "gather_axis": 0,
                                                        "quantize_axis": 1}
    inits = _inits(proto)
    packed, scale = inits["word.weight_int4_packed"], inits["word.weight_scale"]
    assert packed.dtype == np.uint8 and packed.shape == (ROWS, DIM // 2) and scale.shape == (ROWS, 1)
    # unpack independently: low nibble first, zero point 8, integers within [-7, 7]
    q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(ROWS, DIM).astype(np.int16) - 8
    assert q.min() >= -7 and q.max() <= 7
    amax = np.abs(table).max(1)
    np.testing.assert_allclose(scale.ravel(), np.where(amax > 0, amax / 7, 1.0), rtol=1e-6)
    after = run_onnx(path, {"ids": ids})
    np.testing.assert_allclose(after, (q * scale)[ids], atol=1e-6)
    (t,) = report.tables
    assert t.form == "int4" and t.bytes_after == ROWS * DIM // 2 + ROWS * 4
    assert np.abs(after - before).max() <= t.max_abs_error + 1e-6 <= scale.max() / 2 + 1e-6


def test_int4_falls_back_to_int8_for_tied_and_odd_tables(tmp_path):
    tied = quantize_embeddings(_model(_table(), tied=True), bits=4)
    odd = quantize_embeddings(_model(_table(ROWS, 33)), bits=4)
    assert tied.tables[0].form == "int8" and "tied" in tied.tables[0].note
    assert odd.tables[0].form == "int8" and "odd" in odd.tables[0].note


def test_no_table_is_an_empty_report_and_a_clear_error(tmp_path):
    proto = _model(_table(8, 4))
    report = quantize_embeddings(proto)
    assert not report.tables and report.skipped == [("word.weight", "8x4 = 32 elements < min_elements 4096")]
    with pytest.raises(EmbeddingError, match=r"no float embedding table .*word.weight: 8x4 = 32 elements"):
        require_tables(report, "m.onnx")
    path = _save(proto, tmp_path / "m.onnx")
    data = path.read_bytes()
    assert not quantize_embeddings_file(path, "int8").tables and path.read_bytes() == data  # untouched
    with pytest.raises(ValueError, match="8 or 4 bits"):
        quantize_embeddings(proto, bits=2)


def test_export_spec_embeddings_field():
    assert uc.Recipe(stages=[uc.PruningSpec(sparsity=0.5)]).export is None
    from unicompress.specs.recipe import ExportSpec

    assert ExportSpec().embeddings == "float" and ExportSpec(embeddings="int4").embeddings == "int4"
    with pytest.raises(SpecValidationError, match=r"embeddings: got 'int8'; embeddings: int8 rewrites the ONNX"):
        validate_data({"formats": ["native"], "embeddings": "int8"}, ExportSpec)
    with pytest.raises(SpecValidationError, match=r"embeddings: got 'int2'"):
        validate_data({"embeddings": "int2"}, ExportSpec)


class _EmbeddingAdapter(NumpyAdapter):
    """The numpy test backend with an embedding layer, exporting a real ONNX graph: a Gather table, or (no_table)
    a plain MatMul."""

    name = "numpy-embedding-test"
    no_table = False

    def layers(self, model):
        return super().layers(model) + [LayerInfo("word", "embedding", LayerRole.embedding, (ROWS, DIM))]

    def export_onnx(self, model, path, example, opset=17):
        if not self.no_table:
            return atomic_write_bytes(Path(path), _model(_table(), opset=opset).SerializeToString())
        node = helper.make_node("MatMul", ["ids", "w"], ["emb"])
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 2])],
                                  [numpy_helper.from_array(np.ones((4, 2), np.float32), "w")])
        return atomic_write_bytes(Path(path), helper.make_model(graph).SerializeToString())


@pytest.fixture
def backends():
    register("numpy-test", NumpyAdapter, replace=True)
    register("numpy-embedding-test", _EmbeddingAdapter, replace=True)
    yield
    unregister("numpy-test")
    unregister("numpy-embedding-test")


def _recipe(backend, tmp_path, **export):
    return uc.Recipe(name="m", backend=backend, stages=[uc.PruningSpec(sparsity=0.5)], evaluate=False,
                     export={"directory": str(tmp_path), "formats": ["onnx"], **export})


def test_compress_rewrites_the_export_and_reports_it(tmp_path, backends):
    ids = _ids()
    result = uc.compress(NumpyMLP(), _recipe("numpy-embedding-test", tmp_path / "out", embeddings="int8"),
                         export_example={"ids": ids}, progress=False, judge=False)
    inits = _inits(onnx.load(str(result.exports["onnx"])))
    assert inits["word.weight_int8"].dtype == np.int8 and "word.weight" not in inits
    (line,) = result.report.export_notes
    assert line.startswith("embeddings int8: word.weight 256x32 int8") and "ONNX Runtime outputs vs float" in line
    assert line in result.report.to_markdown() and result.report.to_dict()["export_notes"] == [line]
    plain = uc.compress(NumpyMLP(), _recipe("numpy-embedding-test", tmp_path / "f"), export_example={"ids": ids},
                        progress=False, judge=False)
    assert "word.weight" in _inits(onnx.load(str(plain.exports["onnx"]))) and not plain.report.export_notes


def test_a_model_without_embeddings_is_refused_before_work(tmp_path, backends):
    model = NumpyMLP()
    before = {k: v.copy() for k, v in model.weights.items()}
    x = np.ones((2, 4), np.float32)
    with pytest.raises(EmbeddingError, match=r"no embedding layer to quantize \(its layer kinds: linear\); "
                                             "nothing was run"):
        uc.compress(model, _recipe("numpy-test", tmp_path, embeddings="int8"), TaskData(calibration=lambda: [x]),
                    progress=False)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())
    assert all(np.array_equal(before[k], model.weights[k]) for k in before)


def test_an_export_without_a_table_keeps_the_compressed_model(tmp_path, backends, monkeypatch):
    monkeypatch.setenv("UNICOMPRESS_RECOVERY_DIR", str(tmp_path / "recovery"))
    monkeypatch.setattr(_EmbeddingAdapter, "no_table", True)
    with pytest.raises(ExportError, match=r"the export failed: EmbeddingError: .*no float embedding table") as info:
        uc.compress(NumpyMLP(), _recipe("numpy-embedding-test", tmp_path / "out", embeddings="int8"),
                    export_example={"ids": np.ones((1, 4), np.float32)}, progress=False, judge=False)
    assert info.value.result.report.after.nonzero == info.value.result.report.before.params // 2


def test_a_tied_gemm_reads_the_same_integers_and_old_opsets_keep_tied_tables_float(tmp_path):
    table, ids = _table(), _ids()
    h = np.random.default_rng(4).normal(size=(3, DIM)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["word.weight", "ids"], ["emb"], name="g"),
         helper.make_node("Gemm", ["h", "word.weight"], ["scores"], name="head", transB=1)], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [3, DIM])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [3, ROWS]),
         helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["b", "s", DIM])],
        [numpy_helper.from_array(table, "word.weight")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = run_onnx(_save(proto, tmp_path / "f.onnx"), {"ids": ids, "h": h})
    report = quantize_embeddings(proto)
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear")
    assert gemm.input[1] == dq.output[0] and dq.input[0] == "word.weight_int8" and report.tables[0].tied == 1
    after = run_onnx(_save(proto, tmp_path / "q.onnx"), {"ids": ids, "h": h})
    q, scale = _reference_int8(table)
    np.testing.assert_allclose(after, h @ (q * scale[:, None]).T, rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(after - before) <= np.abs(h).sum(1, keepdims=True) * scale / 2 + 1e-5)
    old = quantize_embeddings(_model(table, tied=True, opset=12))
    assert not old.tables and "needs opset >= 13, the graph has 12" in old.skipped[0][1]


@pytest.mark.parametrize("transposed", [True, False])
def test_a_folded_copy_of_a_tied_table_reads_the_same_integers(tmp_path, transposed):
    """torch.onnx writes a tied LM head (GPT-2, BERT-MLM) as its own constant: table.T, found by value."""
    table, ids = _table(), _ids()
    copy = table.T.copy() if transposed else table.copy()
    head = helper.make_node("MatMul", ["emb", "head.weight"], ["logits"], name="head") if transposed else \
        helper.make_node("Gemm", ["emb2d", "head.weight"], ["logits"], name="head", transB=1)
    nodes = [helper.make_node("Gather", ["word.weight", "ids"], ["emb"], name="g")]
    if not transposed:
        nodes.append(helper.make_node("Reshape", ["emb", "shape"], ["emb2d"], name="flat"))
    graph = helper.make_graph(
        nodes + [head], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 7])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 7, ROWS] if transposed else [14, ROWS])],
        [numpy_helper.from_array(table, "word.weight"), numpy_helper.from_array(copy, "head.weight"),
         numpy_helper.from_array(np.array([14, DIM], np.int64), "shape")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = run_onnx(_save(proto, tmp_path / "f.onnx"), {"ids": ids})
    report = quantize_embeddings(proto)
    (t,) = report.tables
    assert t.tied == 1 and t.bytes_before == 2 * ROWS * DIM * 4 and "tied copy head.weight" in t.note
    inits = _inits(proto)
    assert "head.weight" not in inits and "word.weight" not in inits
    assert [v.dtype for v in inits.values() if v.size == ROWS * DIM] == [np.int8]  # one integer copy, no float
    ops = [n.op_type for n in proto.graph.node]
    assert ("Transpose" in ops) == transposed and ops.count("DequantizeLinear") == 1
    after = run_onnx(_save(proto, tmp_path / "q.onnx"), {"ids": ids})
    q, scale = _reference_int8(table)
    deq = q * scale[:, None]
    expected = deq[ids] @ deq.T  # ORT fuses DequantizeLinear(int8) -> MatMul into MatMulNBits (weight-only int8),
    # which quantizes its activations on the fly: ~1e-4 off the float product of the dequantized values
    assert np.abs(after.reshape(2, 7, ROWS) - expected).max() <= 1e-3 * np.abs(expected).max()
    assert np.abs(after - before).max() < 0.05 * np.abs(before).max()
