"""The check each backend's test_<fw>_embeddings_export.py runs: the zoo tiny-bert through compress() with
``export: {embeddings: int8}`` (after a float stage and after an int8 static stage; int4 after the float stage).
The word-embedding table must be int8 (int4: packed uint8 read by GatherBlockQuantized) in the file, ONNX
Runtime's logits within `LOGITS_ATOL` of the compressed model's own float export, and the file smaller by the
table's bytes * 3/4 (int4: 7/8) less its scales (and the few hundred bytes of the new nodes)."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

import unicompress as uc
from unicompress import zoo
from unicompress.backend import get_backend
from unicompress.backend.types import TaskData
from unicompress.onnx.runtime import run_onnx

CFG = zoo.config_for("tiny-bert")
TABLE = CFG.vocab_size * CFG.hidden_size  # 128 x 32 word embeddings; position (32 x 32) and token type stay float
#: logits of tiny-bert move by ~5e-5 (float stage) and ~1e-3 (int8 static: a rounding step of the first
#: activation quantizer may flip) when its word table is int8
LOGITS_ATOL = {"prune": 5e-4, "int8-static": 5e-3}
#: bytes the new nodes and initializer names add to the file (measured ~700 on the four backends' exports)
NODE_BYTES = 1500


def task_data(batches: int = 2, batch: int = 8) -> TaskData:
    data = []
    for b in range(batches):
        x = zoo.inputs_for("tiny-bert", CFG, batch=batch, length=8, seed=b)
        data.append((x, (x["input_ids"][:, 1] % CFG.num_labels).astype(np.int64)))
    return TaskData(train=lambda: iter(data), calibration=lambda: (x for x, _ in data), num_labels=CFG.num_labels)


STAGES = {"prune": [{"technique": "pruning", "granularity": "unstructured", "sparsity": 0.5}],
          "int8-static": [{"technique": "quantization", "mode": "static"}]}


def check_embeddings_export(backend: str, model: Any, stages: str, tmp_path, form: str = "int8") -> dict:
    """Run the recipe with `form` embeddings on `model`, export the compressed model again with float embeddings
    (the backend's own export_onnx) and compare the files; returns the measured numbers."""
    recipe = {"name": f"tiny-{stages}", "backend": backend, "stages": STAGES[stages], "evaluate": False,
              "export": {"directory": str(tmp_path / form), "formats": ["onnx"], "embeddings": form}}
    small = uc.compress(model, recipe, task_data(), progress=False, judge=False)
    adapter = get_backend(backend)
    example = zoo.inputs_for("tiny-bert", CFG, batch=8, length=8, seed=0)  # what compress() exported with
    path_f = adapter.export_onnx(small.model, tmp_path / "float.onnx", example, 17)
    path_q = small.exports["onnx"]
    float_inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path_f)).graph.initializer}
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path_q)).graph.initializer}
    shape = (CFG.vocab_size, CFG.hidden_size)
    word = [n for n, v in float_inits.items() if v.shape == shape]
    assert len(word) == 1, word  # exporters name it their own way (and tf2onnx / paddle2onnx renumber per export)
    table = float_inits[word[0]]
    amax = np.abs(table).max(1)
    if form == "int8":
        ints = [n for n, v in inits.items() if v.dtype == np.int8 and v.shape == shape]
        suffix, stored = "_int8", TABLE + CFG.vocab_size * 4  # integers + one float scale per row
        scale = np.where(amax > 0, amax / 127, 1.0)
        expected = np.clip(np.rint(table / scale[:, None]), -127, 127)
        got = inits[ints[0]] if ints else None
    else:  # 4-bit, two per byte, one scale per row of 32 (hidden 32 = one block)
        ints = [n for n, v in inits.items() if v.dtype == np.uint8 and v.shape == (shape[0], shape[1] // 2)]
        suffix, stored = "_int4_packed", TABLE // 2 + CFG.vocab_size * 4
        scale = np.where(amax > 0, amax / 7, 1.0)
        expected = np.clip(np.rint(table / scale[:, None]), -7, 7)
        packed = inits[ints[0]] if ints else None
        got = None if packed is None else \
            np.stack([packed & 15, packed >> 4], -1).reshape(shape).astype(np.int16) - 8
    assert len(ints) == 1 and ints[0].endswith(suffix) and ints[0][:-len(suffix)] not in inits, ints
    name = ints[0][:-len(suffix)]
    np.testing.assert_array_equal(got, expected)
    assert not [n for n, v in inits.items() if v.dtype == np.float32 and v.shape == shape]
    square = (CFG.max_position_embeddings, CFG.hidden_size)  # the 1024-element position table stays float
    assert sum(v.shape == square for v in inits.values()) == sum(v.shape == square for v in float_inits.values())
    x = zoo.inputs_for("tiny-bert", CFG, batch=4, length=12, seed=7)
    diff = float(np.abs(run_onnx(path_q, x) - run_onnx(path_f, x)).max())
    assert diff <= LOGITS_ATOL[stages] * (10 if form == "int4" else 1), diff
    drop = path_f.stat().st_size - path_q.stat().st_size
    assert TABLE * 4 - stored - NODE_BYTES <= drop <= TABLE * 4 - stored, drop
    (line,) = small.report.export_notes
    assert line.startswith(f"embeddings {form}: {name} 128x32 {form} 16.4 KB -> {stored / 1e3:.1f} KB"), line
    return {"logits_max_abs": diff, "file_drop": drop}
