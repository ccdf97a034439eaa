"""Fuzz what a user hands the core: recipes (as data and as YAML/JSON text) and checkpoint files.

Whatever the input, nothing but the library's own errors may escape and no validation may take a second.
The default run tries 2,400 cases (recipes as data 800, recipe text 600, checkpoints 600, round trips 400) in
about half a minute on 2 cores; ``-m slow`` runs the same properties on 10,000.
"""
from __future__ import annotations

import gc
import json
import random
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unicompress import zoo
from unicompress.errors import CheckpointError, SpecValidationError, UnicompressError
from unicompress.recipe_io import _inner_model, dump_text, load_recipe
from unicompress.specs import STAGE_TYPES, Recipe
from unicompress.zoo.checkpoint import read_checkpoint, save_checkpoint

BUDGET_S = 1.0  # the bound on one validation, in CPU seconds (the wall clock waits for other processes)
WALL_S = 10.0  # what a hang would exceed even on a loaded machine

# ---- recipes as data: shaped like the schema, with hostile values ------------------------------------------------
EDGE = [0, 1, -1, 2, 4, 8, 16, 0.5, 1.5, -0.0, 1e308, float("nan"), float("inf"), 2**31, 2**32 - 1, 2**32, 2**63,
        2**64, 2**127, -(2**127), True, False, None, "", " ", "x", "../../x", "/abs/x", "a\x00b", "C:\\x", "..",
        "\U0001F600", "é" * 120, "x" * 300, "os:system", "unicompress.fileio:atomic_write_text", "_private:f",
        "torch", "auto", "pruning", "quantization", "n_m", "head", "static", "qat", "global", "per_channel", "*",
        "[", "{backend}", "{other}", [], {}, [1, 2], {"a": 1}]
scalars = (st.sampled_from(EDGE) | st.integers(-(2**130), 2**130) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=20))
plain = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)


_MODEL_DICTS: dict = {}


def model_dict(model, depth: int = 0) -> st.SearchStrategy:
    """Dicts whose keys are any of the model's own fields (plus typos), values nested models or hostile data."""
    if (model, depth) in _MODEL_DICTS:
        return _MODEL_DICTS[model, depth]

    def value_for(key: str) -> st.SearchStrategy:
        if depth > 2:
            return plain
        if key == "stages":
            return st.lists(stage_dict(depth + 1), max_size=4) | plain
        inner = _inner_model(model.model_fields[key].annotation)
        if inner is not None:
            return model_dict(inner, depth + 1) | st.lists(model_dict(inner, depth + 1), max_size=3) | plain
        return plain

    optional = {key: value_for(key) for key in model.model_fields}
    optional.update({key + "x": plain for key in list(model.model_fields)[:2]})
    optional["<<"] = plain
    strategy = st.fixed_dictionaries({}, optional=optional)
    _MODEL_DICTS[model, depth] = strategy
    return strategy


def stage_dict(depth: int) -> st.SearchStrategy:
    return st.one_of([model_dict(cls, depth).map(lambda d, t=t: {"technique": t, **d})
                      for t, cls in sorted(STAGE_TYPES.items())] + [plain])


def _only_ours(call) -> float:
    """Run `call`; only the library's own errors may escape. Returns the seconds it took."""
    gc.freeze()  # time the validation, not a collection of hypothesis's own heap that it happens to trigger
    t0, w0 = time.process_time(), time.perf_counter()
    try:
        call()
    except SpecValidationError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)
        assert len(str(exc)) < 20_000, "an error message must stay readable"
    finally:
        seconds, wall = time.process_time() - t0, time.perf_counter() - w0
        gc.unfreeze()
    assert seconds < BUDGET_S and wall < WALL_S, f"validation took {seconds:.2f} CPU s ({wall:.2f} s)"
    return seconds


def _recipe_as_data(data: dict) -> None:
    _only_ours(lambda: load_recipe(data))


def _recipe_as_text(text: str) -> None:
    _only_ours(lambda: load_recipe(text + "\n"))


# ---- recipes as text: YAML of the data above, mutated, plus the classic attacks ----------------------------------
def _bomb(levels: int, width: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + f"\nstages: [{{technique: pruning, sparsity: 0.5, selector: {{include: *a{levels - 1}}}}}]"


ATTACKS = st.one_of(
    st.builds(_bomb, st.integers(2, 12), st.integers(2, 12)),
    st.integers(1, 5000).map(lambda n: "stages: " + "[" * n + "]" * n),
    st.integers(1, 5000).map(lambda n: "stages:\n" + "".join(" " * i + "- \n" for i in range(n % 400))),
    st.integers(1, 5000).map(lambda n: "seed: " + "9" * n + "\nstages: [{technique: low_rank, rank: 1}]"),
    st.integers(4900, 5100).map(lambda n: "stages: [" + "1," * n + "]"),  # just inside and past MAX_NODES
    st.integers(1, 20000).map(lambda n: '{"stages": [' + "1," * n + '1]}'),
    st.sampled_from(["!!python/object/apply:os.system ['echo pwned']", "!!python/name:os.system", "a: !!binary aGk=",
                     "a: &a [*a]", "a: &a {<<: *a}", "<<: {stages: [{technique: low_rank, rank: 2}]}",
                     "stages: [{technique: low_rank, rank: 2}]\nstages: []", "--- a\n--- b", "\x00", "\ufeffstages: []",
                     '{"stages": [{"technique": "low_rank", "rank": 2}], "name": "\\ud83d\\ude00"}',
                     '{"stages": [{"technique": "low_rank", "rank": 2}], "name": "\\ud83d"}']),
)


def _yaml_of(data: object) -> str:
    try:
        return yaml.safe_dump(data, allow_unicode=True)
    except Exception:  # noqa: BLE001 - data yaml cannot write (nan keys...): use its repr as text
        return repr(data)


def _mutate(text: str, seed: int) -> str:
    rnd = random.Random(seed)
    chars = list(text)
    for _ in range(rnd.randint(0, 4)):
        op = rnd.random()
        pos = rnd.randint(0, len(chars))
        if op < 0.4:
            chars.insert(pos, rnd.choice("[]{}:,-&*!|>'\"#\n\t <\x00\ud83d"))
        elif op < 0.7 and chars:
            del chars[min(pos, len(chars) - 1)]
        else:
            chars[pos:pos] = list(rnd.choice(["&x ", "*x", "<<: ", "!!set ", "!!python/tuple ", "9" * 50, "\n  "]))
    return "".join(chars)


texts = (ATTACKS | st.tuples(model_dict(Recipe), st.integers(0, 2**31)).map(lambda t: _mutate(_yaml_of(t[0]), t[1]))
         | st.text(max_size=200))


# ---- checkpoints: a real one, then corrupted -------------------------------------------------------------------
_CKPT: dict[str, bytes] = {}


def _checkpoint_bytes() -> bytes:
    if "tiny" not in _CKPT:
        with tempfile.TemporaryDirectory() as d:
            cfg = zoo.config_for("tiny-bert", 3)
            path = save_checkpoint(zoo.weights_for("tiny-bert", cfg), Path(d) / "c.safetensors", "tiny-bert")
            _CKPT["tiny"] = path.read_bytes()
    return _CKPT["tiny"]


def _corrupt(data: bytes, how: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    if how == 0:  # flip bytes, mostly in the header
        out = bytearray(data)
        for _ in range(rnd.randint(1, 8)):
            out[rnd.randrange(0, min(len(out), 8 + n + 64))] ^= 1 << rnd.randrange(8)
        return bytes(out)
    if how == 1:  # truncate
        return data[:rnd.randrange(0, len(data))]
    if how == 2:  # a header that lies about one tensor
        name = rnd.choice([k for k in header if k != "__metadata__"])
        field = rnd.choice(["dtype", "shape", "data_offsets"])
        header[name][field] = rnd.choice([["F32"], "BF16", "I64", "F16", "X", [10**12], [-1], [0, 10**9], [3, 1], [],
                                          [2**64], None, "F32", [1, 2, 3]])
    elif how == 3:  # metadata that lies
        header["__metadata__"] = rnd.choice([{"unicompress_zoo": "nope"}, {"unicompress_zoo": "tiny-vit"}, {},
                                             {"unicompress_zoo": 5}, None, {"unicompress_zoo": "x" * 10_000}])
    else:  # drop or add tensors
        key = rnd.choice([k for k in header if k != "__metadata__"])
        if rnd.random() < 0.5:
            del header[key]
        else:
            header["extra." + key] = dict(header[key])
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def _checkpoint_case(how: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.safetensors"
        path.write_bytes(_corrupt(_checkpoint_bytes(), how, seed))
        gc.freeze()  # as in _only_ours: time the read, not a collection of hypothesis's heap
        t0 = time.process_time()
        try:
            ckpt = read_checkpoint(path)
            assert ckpt.zoo == "tiny-bert"  # a corruption of the tensor bytes only: still a valid file
        except CheckpointError as exc:
            assert str(path) in str(exc), "a checkpoint error names the file"
        finally:
            seconds = time.process_time() - t0
            gc.unfreeze()
        assert seconds < BUDGET_S, f"reading took {seconds:.2f} CPU s"


# ---- valid recipes round-trip, whatever their text ----------------------------------------------------------------
names = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"), min_size=1,
                max_size=30).filter(lambda s: s.strip() and set(s.strip()) != {"."})


def _round_trip(name: str, description: str, fmt: str, seed: int) -> None:
    recipe = load_recipe({"name": name, "description": description, "seed": seed,
                          "stages": [{"technique": "low_rank", "rank": 2}]})
    text = dump_text(recipe, fmt)
    assert load_recipe(text) == recipe
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"r.{fmt}"
        path.write_text(text, encoding="utf-8")
        assert load_recipe(path) == recipe


descriptions = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
seeds = st.integers(0, 2**32 - 1)

# ---- the tests: the same properties at two sizes ---------------------------------------------------------------
FAST = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                   HealthCheck.filter_too_much])


@settings(max_examples=800, **FAST)
@given(model_dict(Recipe))
def test_any_recipe_data_gives_only_our_errors_fast(data):
    _recipe_as_data(data)


@settings(max_examples=600, **FAST)
@given(texts)
def test_any_recipe_text_gives_only_our_errors_fast(text):
    _recipe_as_text(text)


@settings(max_examples=600, **FAST)
@given(st.integers(0, 4), st.integers(0, 2**31))
def test_any_corrupt_checkpoint_gives_only_our_error_naming_the_file(how, seed):
    _checkpoint_case(how, seed)


@settings(max_examples=400, **FAST)
@given(names, descriptions, st.sampled_from(["yaml", "json"]), seeds)
def test_valid_recipes_with_any_text_round_trip(name, description, fmt, seed):
    _round_trip(name, description, fmt, seed)


@pytest.mark.slow
@settings(max_examples=4000, **FAST)
@given(model_dict(Recipe))
def test_any_recipe_data_gives_only_our_errors_10k(data):
    _recipe_as_data(data)


@pytest.mark.slow
@settings(max_examples=3000, **FAST)
@given(texts)
def test_any_recipe_text_gives_only_our_errors_10k(text):
    _recipe_as_text(text)


@pytest.mark.slow
@settings(max_examples=2000, **FAST)
@given(st.integers(0, 4), st.integers(0, 2**31))
def test_any_corrupt_checkpoint_10k(how, seed):
    _checkpoint_case(how, seed)


@pytest.mark.slow
@settings(max_examples=1000, **FAST)
@given(names, descriptions, st.sampled_from(["yaml", "json"]), seeds)
def test_valid_recipes_round_trip_10k(name, description, fmt, seed):
    _round_trip(name, description, fmt, seed)
