"""The adapter base answers the narrow questions from the `answers` table (data, not copied delegating methods),
and a backend that answers a required question neither way is refused when its class is defined."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from unicompress.backend.adapter import Adapter
from unicompress.backend.capabilities import Capabilities


def test_a_backend_missing_required_answers_is_refused_at_class_definition():
    with pytest.raises(TypeError, match=r"'half' .*: weights, set_weights, run, describe, export_onnx"):
        class Half(Adapter):  # noqa: F841 - the definition itself must fail
            name = "half"
            answers = {"layers": ("layers", "layer_infos")}

            def capabilities(self) -> Capabilities:
                return Capabilities("half", {}, {})


def test_answers_call_the_named_functions_of_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "answers_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "ops.py").write_text(
        "import numpy as np\n"
        "def layers(model): return ['w']\n"
        "def weights(model, names): return {'w': model['w']}\n"
        "def set_weights(model, weights): model.update(weights)\n"
        "def run(model, inputs): return inputs @ model['w'].T\n"
        "def describe(model): return []\n"
        "def export(model, path, example, opset): path.write_text(f'opset {opset}'); return path\n"
        "def build(zoo, seed=0, num_labels=None, weights=None): return {'w': np.full((2, 3), float(seed))}\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class Answered(Adapter):
        name = "answered"
        package = "answers_pkg"
        answers = {"layers": ("ops", "layers"), "weights": ("ops", "weights"), "set_weights": ("ops", "set_weights"),
                   "run": ("ops", "run"), "describe": ("ops", "describe"), "export_onnx": ("ops", "export"),
                   "build_model": ("ops", "build")}

        def capabilities(self) -> Capabilities:
            return Capabilities("answered", {}, {})

    a = Answered()
    model = a.build_model("tiny", seed=2)
    assert a.layers(model) == ["w"] and a.structure(model) is None and a.quantized_weights(model) == {}
    copy = a.copy(model)  # default: a deep copy
    a.set_weights(copy, {"w": np.ones((2, 3))})
    assert model["w"][0, 0] == 2.0 and a.weights(copy)["w"].sum() == 6.0
    np.testing.assert_array_equal(a.run(copy, np.ones((1, 3))), [[3.0, 3.0]])
    assert Path(a.export_onnx(model, tmp_path / "m.onnx", None, opset=19)).read_text() == "opset 19"
    with pytest.raises(NotImplementedError, match="no native export"):
        a.export_native(model, tmp_path)
    with pytest.raises(NotImplementedError, match="neutral layout"):
        a.neutral_weights(model)
    sys.modules.pop("answers_pkg.ops", None)
    sys.modules.pop("answers_pkg", None)
