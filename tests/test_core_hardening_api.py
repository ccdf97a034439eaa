"""compress() refuses bad weights, data and outputs before any work, keeps the result when the end fails, never
spins on empty batches, and serialises concurrent calls."""
import errno
import itertools
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

import unicompress as uc
from unicompress.backend import register, unregister
from unicompress.backend.types import TaskData, rebatch
from unicompress.errors import (ExportError, InvalidDataError, MissingDataError, NonFiniteWeightsError,
                                OutputPathError)

from numpy_adapter import NumpyAdapter, NumpyMLP


class Recording(NumpyAdapter):
    """The numpy backend, counting what it was asked to do (so a test can say "no stage ran")."""

    def __init__(self, fail_export_under=None, sleep=0.0):
        super().__init__()
        self.calls: list[str] = []
        self.fail_export_under = fail_export_under
        self.sleep = sleep
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def copy(self, model):
        self.calls.append("copy")
        return super().copy(model)

    def _prune(self, model, spec, data, ctx):
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(self.sleep)
        self.calls.append("prune")
        try:
            return super()._prune(model, spec, data, ctx)
        finally:
            with self._lock:
                self.active -= 1

    def run(self, model, inputs):
        return super().run(model, inputs) * getattr(model, "scale", 1.0)

    def export_onnx(self, model, path, example, opset=17):
        if self.fail_export_under is not None and str(self.fail_export_under) in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return super().export_onnx(model, path, example, opset)


@dataclass
class ScaledMLP(NumpyMLP):
    """An MLP with one parameter outside the layers the backend lists (like a LayerNorm weight)."""

    scale: float = 1.0


@pytest.fixture
def adapter():
    made = Recording()
    register("numpy-test", made, replace=True)
    yield made
    unregister("numpy-test")


X = np.random.default_rng(2).normal(size=(16, 4)).astype(np.float32)


def _data(x=X, y=None, num_labels=3):
    y = np.zeros(len(x), np.int64) if y is None else y
    return TaskData(train=lambda: iter([({"x": x}, y)]), calibration=lambda: iter([{"x": x}]),
                    evaluation=lambda: iter([({"x": x}, y)]), num_labels=num_labels)


def _prune(export=None, name="mlp"):
    return uc.Recipe(name=name, backend="numpy-test", stages=[uc.PruningSpec(sparsity=0.5)], export=export,
                     evaluate=False)


# ---- 1. zero-row batches never spin ---------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [None, 4])
def test_a_batch_without_rows_stops_the_training_stream_at_once(batch_size):
    good = ({"x": X[:3]}, np.zeros(3, np.int64))
    empty = ({"x": X[:0]}, np.zeros(0, np.int64))
    data = TaskData(train=lambda: iter([good, empty]))
    t0 = time.perf_counter()
    with pytest.raises(InvalidDataError, match="yielded a batch with no rows"):
        list(itertools.islice(data.endless_train(batch_size), 100))
    assert time.perf_counter() - t0 < 1.0


def test_rebatch_refuses_empty_and_misaligned_batches():
    with pytest.raises(InvalidDataError, match="no rows"):
        next(rebatch(itertools.repeat(({"x": X[:0]}, np.zeros(0))), 4))  # an endless stream of empties
    with pytest.raises(InvalidDataError, match="disagree on the number of rows: x 3, labels 2"):
        next(rebatch(iter([({"x": X[:3]}, np.zeros(2))]), 4))


def test_compress_refuses_an_empty_batch_before_any_stage(adapter):
    with pytest.raises(InvalidDataError, match="TaskData.train batch 0 yielded a batch with no rows"):
        uc.compress(NumpyMLP(), _prune(), _data(x=X[:0]), progress=False)
    assert adapter.calls == []


# ---- 6. non-finite weights, data and outputs; labels ------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_before_any_work(adapter, value):
    model = NumpyMLP()
    model.weights["ffn.in"][0, 0] = value
    before = {k: v.copy() for k, v in model.weights.items()}
    with pytest.raises(NonFiniteWeightsError, match=r"ffn.in \(\d NaN, \d inf of 32\)"):
        uc.compress(model, _prune(), progress=False)
    assert adapter.calls == []  # not even copied
    assert all(np.array_equal(before[k], model.weights[k], equal_nan=True) for k in before)


def test_a_non_finite_parameter_outside_the_layer_list_is_caught_on_the_outputs(adapter):
    with pytest.raises(NonFiniteWeightsError, match="outputs on the first 4 example rows"):
        uc.compress(ScaledMLP(scale=float("nan")), _prune(), _data(), progress=False)
    assert adapter.calls == []


@pytest.mark.parametrize("source", ["train", "calibration", "evaluation"])
def test_non_finite_data_is_refused_before_any_work(adapter, source):
    bad = X.copy()
    bad[3, 1] = np.nan
    clean = _data()
    data = TaskData(**{**clean.__dict__, source: _data(x=bad).__dict__[source]})
    with pytest.raises(InvalidDataError, match=f"TaskData.{source} batch 0: input 'x' holds 1 NaN"):
        uc.compress(NumpyMLP(), _prune(), data, progress=False)
    assert adapter.calls == []


def test_non_finite_calibration_batches_later_on_stop_the_calibration():
    good, bad = {"x": X}, {"x": np.full_like(X, np.inf)}
    data = TaskData(calibration=lambda: iter([good, good, good, bad]))
    with pytest.raises(InvalidDataError, match="TaskData.calibration: input 'x' holds 0 NaN and 64 infinite"):
        data.calibration_batches(8)


@pytest.mark.parametrize("labels, fragment", [
    (np.full(16, 1.7, np.float32), r"labels are float32 \[1.7"),
    (np.full(16, 1.0), "labels are float64"),
    (np.full(16, 3, np.int64), r"labels range over \[3, 3\], outside \[0, 3\)"),
    (np.full(16, -1, np.int64), r"outside \[0, 3\)"),
])
def test_labels_that_are_no_class_indices_are_refused(adapter, labels, fragment):
    with pytest.raises(InvalidDataError, match=fragment):
        uc.compress(NumpyMLP(), _prune(), _data(y=labels), progress=False)
    assert adapter.calls == []
    if labels.dtype.kind == "f":  # the training stream refuses them too, at any batch
        with pytest.raises(InvalidDataError, match="labels are float"):
            next(TaskData(train=lambda: iter([({"x": X}, labels)])).endless_train(4))


# ---- 5. nothing is lost at the end --------------------------------------------------------------------------------
def test_an_export_folder_that_is_a_file_is_refused_before_any_stage(adapter, tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OutputPathError, match="is a file; the exports need a folder there"):
        uc.compress(NumpyMLP(), _prune({"directory": str(tmp_path / "out")}), _data(), progress=False)
    assert adapter.calls == []


def test_a_folder_in_the_way_of_an_export_file_is_refused_before_any_stage(adapter, tmp_path):
    (tmp_path / "mlp.onnx").mkdir()
    with pytest.raises(OutputPathError, match="mlp.onnx.*is a folder where the export writes a file"):
        uc.compress(NumpyMLP(), _prune({"directory": str(tmp_path)}), _data(), progress=False)
    (tmp_path / "sub").write_text("x")
    with pytest.raises(OutputPathError, match="cannot be made: .*sub is a file"):
        uc.compress(NumpyMLP(), _prune({"directory": str(tmp_path / "sub" / "deeper")}), _data(), progress=False)
    assert adapter.calls == []


def test_an_onnx_export_without_example_inputs_is_refused_before_any_stage(adapter, tmp_path):
    with pytest.raises(MissingDataError, match="export needs example inputs"):
        uc.compress(NumpyMLP(), _prune({"directory": str(tmp_path)}), None, progress=False)
    assert adapter.calls == [] and list(tmp_path.iterdir()) == []


def test_a_failing_export_keeps_the_compressed_model_and_saves_a_copy(tmp_path, monkeypatch):
    made = Recording(fail_export_under=tmp_path / "out")
    register("numpy-test", made, replace=True)
    monkeypatch.setenv("UNICOMPRESS_RECOVERY_DIR", str(tmp_path / "recovery"))
    model = NumpyMLP()
    before = {k: v.copy() for k, v in model.weights.items()}
    try:
        with pytest.raises(ExportError) as info:
            uc.compress(model, _prune({"directory": str(tmp_path / "out")}), _data(), progress=False)
    finally:
        unregister("numpy-test")
    err = info.value
    assert "prune" in made.calls and "No space left on device" in str(err)
    kept = err.result.model.weights
    assert sum(int((w == 0).sum()) for w in kept.values()) == 28  # half of 8*4 + 3*8 weights: the work is there
    assert err.recovery is not None and err.recovery.exists() and str(err.recovery) in str(err)
    assert err.recovery.parent.parent == tmp_path / "recovery" and err.recovery.name == "mlp.onnx"
    assert err.result.report.stages[0].technique == "pruning"
    assert all(np.array_equal(before[k], model.weights[k]) for k in before)  # the input is untouched


def test_a_failing_evaluation_after_the_stages_keeps_the_model_too(adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("UNICOMPRESS_RECOVERY_DIR", str(tmp_path))
    recipe = _prune().model_copy(update={"evaluate": True})
    calls = []

    def evaluate(model):
        calls.append(model)
        if len(calls) == 2:
            raise RuntimeError("the metric server is down")
        return 0.5
    with pytest.raises(ExportError, match="the evaluation failed: RuntimeError: the metric server is down") as info:
        uc.compress(NumpyMLP(), recipe, _data(), evaluate=evaluate, progress=False)
    assert info.value.result.model is calls[1] and info.value.recovery.name == "mlp.onnx"


# ---- 7. threads ---------------------------------------------------------------------------------------------------
def test_concurrent_compress_calls_are_serialised_and_each_result_is_right():
    made = Recording(sleep=0.05)
    register("numpy-test", made, replace=True)
    results, errors = [], []

    def work(seed):
        try:
            model = NumpyMLP()
            results.append(uc.compress(model, _prune(), progress=False).report.after.sparsity)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        unregister("numpy-test")
    assert errors == [] and len(results) == 4 and all(r == pytest.approx(0.5) for r in results)
    assert made.most_active == 1  # never two stages at once
