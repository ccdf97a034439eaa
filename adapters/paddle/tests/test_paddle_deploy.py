"""Paddle Inference as a deployment runtime (unicompress.deploy `paddle-inference`): the backend's native
export (paddle.jit.save) in Paddle's own predictor, side by side with its ONNX export in ONNX Runtime, with
the same answers (real Paddle, paddle2onnx and ONNX Runtime)."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from unicompress import zoo
from unicompress.deploy import choose, compare_runtimes, get_runtime
from unicompress_paddle.backend import PaddleAdapter

A = PaddleAdapter()
CFG = zoo.config_for("tiny-bert")
X = zoo.inputs_for("tiny-bert", CFG)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("paddle-deploy")
    model = A.build_model("tiny-bert")
    return A.export_onnx(model, d / "model.onnx", X), A.export_native(model, d / "native") / "model.json", model


def test_the_predictor_reads_the_native_export_with_its_declared_inputs(files):
    _, program, model = files
    rt = get_runtime("paddle-inference")
    assert rt.available() and rt.reads_file(program) and rt.version() == paddle.__version__
    loaded = rt.load(program, threads=1)
    assert [(s.name, s.shape, s.type) for s in loaded.get_inputs()] == [
        ("input_ids", (None, None), "tensor(int64)"), ("attention_mask", (None, None), "tensor(int64)")]
    logits, = loaded.run(X)
    assert logits.shape == (X["input_ids"].shape[0], CFG.num_labels)
    assert float(np.abs(logits - A.run(model, X)).max()) < 1e-5


def test_paddle_inference_and_onnx_runtime_in_one_table(files):
    onnx_path, program, _ = files
    table = compare_runtimes([onnx_path, program], ["onnxruntime", "paddle-inference"], batch=2, length=9,
                             threads=1, runs=3, warmup=1, vocab=CFG.vocab_size)
    assert [(r.runtime, r.file.rsplit("/", 1)[-1]) for r in table.rows] == [
        ("onnxruntime", "model.onnx"), ("paddle-inference", "model.json")]
    native = table.rows[1]
    assert table.inputs == "synthetic" and table.metric == "argmax"
    assert native.error is None and native.max_abs < 1e-5 and native.argmax_agreement == 1.0
    params = program.with_suffix(".pdiparams")
    assert native.size_mb == pytest.approx((program.stat().st_size + params.stat().st_size) / 1e6)
    assert choose(table, 0.99).row in table.rows
