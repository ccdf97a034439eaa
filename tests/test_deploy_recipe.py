"""A recipe's ``export: {deploy: ...}``: the uncompressed model's FP32 baseline is exported before the stages, the
compressed file is measured on every runtime against ONNX Runtime on it, and the report names the choice."""
from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from unicompress import compress  # noqa: E402
from unicompress.conformance.cases import task_data  # noqa: E402
from unicompress.errors import SpecValidationError  # noqa: E402
from unicompress.recipe_io import validate_data  # noqa: E402
from unicompress.specs import Recipe  # noqa: E402


def _recipe(tmp_path, runtimes, **deploy):
    return {"name": "tiny", "stages": [{"technique": "quantization", "mode": "dynamic"}],
            "export": {"directory": str(tmp_path), "deploy": {"runtimes": runtimes, "batch": 4, "runs": 3, **deploy}}}


def test_the_report_holds_every_file_on_every_runtime_and_the_choice(tmp_path):
    from unicompress.backend.registry import get_backend

    a = get_backend("onnx")
    model = a.build_model("tiny-bert")
    result = compress(model, _recipe(tmp_path, ["onnxruntime"]), task_data("tiny-bert"), backend="onnx",
                      progress=False)
    dep = result.report.deployment
    files = {(r["file"].rsplit("/", 1)[-1], r["runtime"]) for r in dep["table"]["rows"]}
    assert files == {("tiny-fp32.onnx", "onnxruntime"), ("tiny.onnx", "onnxruntime")}
    assert (tmp_path / "tiny-fp32.onnx").is_file() and result.report.exports["baseline_onnx"].endswith("tiny-fp32.onnx")
    base = next(r for r in dep["table"]["rows"] if r["file"].endswith("tiny-fp32.onnx"))
    assert base["speedup"] == pytest.approx(1.0) and base["agreement"] == pytest.approx(1.0)
    assert dep["reason"] and "## Deployment targets" in result.report.to_markdown()
    assert "markdown" not in result.report.to_dict()["deployment"]


def test_openvino_joins_when_installed(tmp_path):
    pytest.importorskip("openvino")
    from unicompress.backend.registry import get_backend

    a = get_backend("onnx")
    result = compress(a.build_model("tiny-bert"), _recipe(tmp_path, ["onnxruntime", "openvino-f32"]),
                      task_data("tiny-bert"), backend="onnx", progress=False)
    rows = result.report.deployment["table"]["rows"]
    ov = [r for r in rows if r["runtime"] == "openvino-f32"]
    assert len(ov) == 2 and all(r["error"] is None for r in ov)
    fp32 = next(r for r in ov if r["file"].endswith("tiny-fp32.onnx"))
    assert fp32["max_abs"] < 1e-4  # the same float graph on another runtime


def test_unknown_runtimes_and_deploy_without_onnx_are_refused_before_work():
    with pytest.raises(SpecValidationError, match="unknown runtime.*tensorrt-nope.*known: .*onnxruntime"):
        validate_data({"stages": [{"technique": "quantization"}],
                       "export": {"deploy": {"runtimes": ["onnxruntime", "tensorrt-nope"]}}}, Recipe)
    with pytest.raises(SpecValidationError, match="deploy measures against ONNX Runtime"):
        validate_data({"stages": [{"technique": "quantization"}],
                       "export": {"formats": ["native"], "deploy": {"runtimes": ["onnxruntime"]}}}, Recipe)


def test_fused_exports_are_not_deployed_to_runtimes_that_cannot_read_them():
    with pytest.raises(SpecValidationError, match="only ONNX Runtime runs.*openvino"):
        validate_data({"stages": [{"technique": "quantization"}],
                       "export": {"optimize": "ort-transformers",
                                  "deploy": {"runtimes": ["onnxruntime", "openvino"]}}}, Recipe)
    validate_data({"stages": [{"technique": "quantization"}],
                   "export": {"optimize": "ort-transformers", "deploy": {"runtimes": ["onnxruntime"]}}}, Recipe)
