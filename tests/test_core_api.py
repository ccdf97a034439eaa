"""compress(): refuse before touching, work on a copy, report what happened."""
import numpy as np
import pytest

import unicompress as uc
from unicompress.backend import Capabilities, Support, build_table, register, unregister
from unicompress.backend.types import TaskData
from unicompress.errors import (BackendNotFoundError, CapabilityError, LayerSelectionError, MissingDataError,
                                StageError)

from numpy_adapter import NumpyAdapter, NumpyMLP


@pytest.fixture(autouse=True)
def backend():
    register("numpy-test", NumpyAdapter, replace=True)
    yield
    unregister("numpy-test")


def _snapshot(model):
    return {k: v.copy() for k, v in model.weights.items()}


def test_compress_works_on_a_copy_and_reports():
    model = NumpyMLP()
    before = _snapshot(model)
    result = uc.compress(model, uc.PruningSpec(sparsity=0.5), backend="numpy-test", progress=False)
    assert all(np.array_equal(before[k], model.weights[k]) for k in before)
    assert result.report.after.nonzero == result.report.before.params // 2
    assert result.report.after.sparsity == pytest.approx(0.5)
    assert result.report.stages[0].history["sparsity"] == [(0, 0.5)]
    text = result.report.to_text()
    assert "non-zero parameters" in text and "50.0%" in text


def test_auto_picks_the_backend_from_the_model_type():
    result = uc.prune(NumpyMLP(), sparsity=0.25)
    assert result.backend == "numpy-test"


def test_unsupported_spec_is_refused_before_the_model_is_touched():
    model = NumpyMLP()
    with pytest.raises(CapabilityError) as info:
        uc.compress(model, uc.PruningSpec(granularity="n_m", n=2, m=4), backend="numpy-test")
    msg = str(info.value)
    assert "stages[0].granularity" in msg and "'n_m'" in msg and "supports: unstructured" in msg


def test_missing_data_and_empty_selection_are_refused_early():
    class Quantizing(NumpyAdapter):
        def capabilities(self):
            base = super().capabilities()
            return Capabilities(self.name, {**base.table, **build_table([
                ("quantization", f, v, Support.native) for f, v in
                [("mode", ["static"]), ("bits", [8]), ("activation_bits", [8]), ("scheme", ["symmetric"]),
                 ("mapping", ["linear"]), ("granularity", ["per_channel"]), ("calibration.method", ["minmax"])]])})

    with pytest.raises(MissingDataError, match="stages\\[0\\] \\(quantization\\) needs calibration"):
        uc.api.check_plan(Quantizing(), NumpyMLP(), uc.api.as_recipe(uc.QuantizationSpec(mode="static")), None)
    with pytest.raises(LayerSelectionError, match="ffn.in \\(ffn_in\\)"):
        uc.compress(NumpyMLP(), uc.PruningSpec(sparsity=0.5, selector={"include": ["*attention*"]}),
                    backend="numpy-test")


def test_failing_stage_leaves_the_input_bit_for_bit_unchanged():
    register("numpy-test", lambda: NumpyAdapter(fail_after_change=True), replace=True)
    model = NumpyMLP()
    before = _snapshot(model)
    with pytest.raises(StageError, match="stage 0 \\(pruning\\) failed.*not modified"):
        uc.compress(model, uc.PruningSpec(sparsity=0.5), backend="numpy-test")
    assert all(np.array_equal(before[k], model.weights[k]) for k in before)


def test_unknown_backend_suggests_the_close_name():
    with pytest.raises(BackendNotFoundError, match="did you mean 'numpy-test'"):
        uc.compress(NumpyMLP(), uc.PruningSpec(sparsity=0.5), backend="numpy-tset")


def test_evaluation_and_export_are_atomic_and_reported(tmp_path):
    x = np.random.default_rng(2).normal(size=(32, 4)).astype(np.float32)
    teacher = NumpyMLP()
    y = NumpyAdapter().run(teacher, x).argmax(-1)
    data = TaskData(evaluation=lambda: [({"x": x}, y)], calibration=lambda: [{"x": x}])
    recipe = uc.Recipe(name="mlp", backend="numpy-test", stages=[uc.PruningSpec(sparsity=0.5)],
                       export={"directory": str(tmp_path), "formats": ["onnx"]})
    result = uc.compress(NumpyMLP(), recipe, data)
    assert result.report.metrics_before["accuracy"] == 1.0
    assert 0.0 <= result.report.metrics_after["accuracy"] <= 1.0
    assert (tmp_path / "mlp.onnx").exists() and not list(tmp_path.glob(".*tmp*"))
    saved = result.report.save(tmp_path / "report")
    assert saved["markdown"].read_text().startswith("# Compression report: mlp")


def test_a_distributed_strategy_the_backend_lacks_is_refused_for_every_training_stage():
    spec = uc.DistillationSpec(training={"steps": 2, "distributed": "data_parallel"})
    problems = uc.api._distributed_problems(0, spec, NumpyAdapter().capabilities())
    assert [p.path for p in problems] == ["stages[0].training.distributed"]
    assert "trains in one process only" in problems[0].allowed
    assert uc.api._distributed_problems(0, uc.DistillationSpec(), NumpyAdapter().capabilities()) == []
