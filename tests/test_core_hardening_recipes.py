"""Recipes are bounded data: hostile text is refused fast with our own error, never echoed, and round-trips hold."""
import json
import os
import time
import tracemalloc

import pytest

from unicompress.errors import Problem, SpecValidationError, shown
from unicompress.recipe_io import MAX_DEPTH, MAX_NODES, MAX_RECIPE_BYTES, dump_text, load_recipe, save_recipe

STAGE = "stages: [{technique: low_rank, rank: 2}]\n"
SECRET = "hunter2-do-not-print"


def _refused(source, budget_s: float = 1.0, budget_mb: float = 200.0) -> SpecValidationError:
    """Load `source`, expecting our error within the issue's bounds (CPU seconds, peak traced memory)."""
    tracemalloc.start()
    t0 = time.process_time()
    try:
        with pytest.raises(SpecValidationError) as info:
            load_recipe(source)
        seconds = time.process_time() - t0
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert seconds < budget_s, f"{seconds:.2f} s"
    assert peak_mb < budget_mb, f"{peak_mb:.0f} MB"
    assert len(str(info.value)) < 10_000
    return info.value


def _bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nstages: [{{technique: pruning, sparsity: 0.5, selector: {{include: *a{levels - 1}}}}}]\n"


def test_a_yaml_alias_bomb_is_refused_at_once():
    text = _bomb()  # 9**9 = 387 million strings once expanded; 475 bytes
    assert len(text) < 600
    err = _refused(text)
    assert f"more than {MAX_NODES:,} values" in str(err) and "aliases counted at each use" in str(err)


def test_the_same_bomb_as_python_data_is_refused_too():
    level = ["x"] * 9
    for _ in range(8):
        level = [level] * 9  # shared references: tiny in memory, huge to walk
    err = _refused({"stages": [{"technique": "pruning", "sparsity": 0.5, "selector": {"include": level}}]})
    assert err.problems[0].path.startswith("stages[0].selector.include")
    assert "shared references count at each use" in err.problems[0].allowed


@pytest.mark.parametrize("text", [
    "stages: " + "[" * 100_000 + "]" * 100_000,  # flow nesting: PyYAML's scanner is quadratic in open levels
    "stages: " + "{a: " * 20_000 + "}" * 20_000,
    "- " * 100_000 + "x",  # block nesting on one line
    "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 600)),
])
def test_deep_nesting_is_refused_without_a_recursion_error(text):
    err = _refused(text + "\n")
    assert f"nested deeper than {MAX_DEPTH} levels" in str(err)


def test_deep_json_and_deep_python_data_are_refused_too():
    assert "levels of nesting" in str(_refused('{"stages": ' + "[" * 900 + "]" * 900 + "}"))
    deep: list = []
    node = deep
    for _ in range(5000):
        node.append([])
        node = node[0]
    assert "levels of nesting" in str(_refused({"stages": deep}))


def test_self_referring_data_is_refused():
    loop: list = []
    loop.append(loop)
    assert "contains itself" in str(_refused({"stages": loop}))
    assert "refers to itself" in str(_refused("a: &a [*a]\n" + STAGE))


@pytest.mark.parametrize("source", [
    "seed: " + "9" * 5000 + "\n" + STAGE,  # beyond Python's 4,300-digit int() limit
    {"seed": 10**5000, "stages": [{"technique": "low_rank", "rank": 2}]},  # repr() of it would raise
    {"seed": 2**200, "stages": [{"technique": "low_rank", "rank": 2}]},
])
def test_huge_integers_are_our_error_not_a_value_error(source):
    err = _refused(source)
    assert "seed" in str(err) or "too large" in str(err)


def test_text_and_files_beyond_the_size_bound_are_refused_unread(tmp_path):
    assert "too large for a recipe" in str(_refused("description: " + "x" * (MAX_RECIPE_BYTES + 1) + "\n" + STAGE))
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:
        fh.truncate(4 * 1024**3)  # a 4 GiB sparse file: read at most the bound, never the whole
    assert f"larger than {MAX_RECIPE_BYTES:,} bytes" in str(_refused(big))


def test_many_problems_are_listed_up_to_a_bound_and_counted():
    err = _refused({"stages": [{"technique": "pruning", "sparsity": 2.0}] * 400})
    assert len(err.problems) == 51 and err.problems[-1].path == "..." and "350 more problem(s)" in str(err)


def test_error_messages_never_repr_a_huge_value():
    assert str(shown("x" * 10**7)).endswith("...") and len(repr(shown("x" * 10**7))) < 100
    assert repr(shown(10**5000)) == "an integer of about 5000 digits"  # repr() of it raises ValueError
    assert repr(shown(list(range(10**6)))) == "a list of 1000000 item(s)"
    assert str(Problem("x", shown({"k": "v" * 10**6}), "bad")) == "x: got a mapping of 1 key(s); bad"


# ---- refusals never echo a file that is no recipe -------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    f"root:x:0:0:{SECRET}:/root:/bin/bash\n",  # a plain-text file: YAML reads it as one string
    f"API_KEY={SECRET}\n",
    f"password: {SECRET}\nuser: admin\n",  # a mapping of other keys
    f"[{SECRET}, 1]\n",
    f"{{\"token\": \"{SECRET}\"}}\n",
    f"key: [unclosed {SECRET}\n",  # broken YAML
])
def test_refusals_never_show_the_content_of_a_file_that_is_no_recipe(tmp_path, content):
    path = tmp_path / "notes.yaml"
    path.write_text(content)
    err = _refused(path)
    assert SECRET not in str(err), str(err)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"stages: [\xff\xfe]\n"), "not UTF-8 text (byte 0xff at offset 9)"),
    (lambda p: None, "file not found"),
])
def test_unusable_recipe_paths_are_our_error_naming_the_path(tmp_path, make, fragment):
    path = tmp_path / "r.yaml"
    make(path)
    err = _refused(path)
    assert fragment in str(err) and str(path) in str(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_recipe_is_our_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(STAGE)
    path.chmod(0)
    assert "permission denied" in str(_refused(path))


# ---- round trips ------------------------------------------------------------------------------------------------
NAME = "modèle-\U0001F680-\u4e2d"  # outside the BMP, accented, CJK


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_characters_outside_the_bmp_round_trip_through_files(tmp_path, fmt):
    recipe = load_recipe({"name": NAME, "description": "\U0001F600 ok", "stages": [{"technique": "low_rank",
                                                                                    "rank": 2}]})
    path = save_recipe(recipe, tmp_path / f"r.{fmt}")
    assert NAME in path.read_text(encoding="utf-8")  # written as the character, not as \\ud83d\\ude80
    assert load_recipe(path) == recipe


def test_json_written_by_other_tools_with_surrogate_pair_escapes_loads():
    text = json.dumps({"name": NAME, "stages": [{"technique": "low_rank", "rank": 2}]})  # ensure_ascii escapes
    assert "\\ud83d\\ude80" in text
    assert load_recipe(text).name == NAME
    with pytest.raises(SpecValidationError, match="lone surrogate"):
        load_recipe('{"name": "\\ud83d", "stages": [{"technique": "low_rank", "rank": 2}]}')


def test_json_numbers_mean_what_json_says():
    recipe = load_recipe('{"stages": [{"technique": "distillation", "training": {"learning_rate": 1e-4}}]}')
    assert recipe.stages[0].training.learning_rate == 1e-4  # YAML 1.1 would read "1e-4" as a string


def test_yaml_merge_keys_are_accepted_and_own_keys_win():
    recipe = load_recipe("stages:\n  - &p {technique: pruning, sparsity: 0.5}\n  - <<: *p\n    sparsity: 0.25\n")
    assert [s.sparsity for s in recipe.stages] == [0.5, 0.25]
    with pytest.raises(SpecValidationError, match="duplicate key 'sparsity'"):
        load_recipe("stages:\n  - {technique: pruning, sparsity: 0.5, sparsity: 0.25}\n")
    with pytest.raises(SpecValidationError, match="refers to itself"):
        load_recipe("stages:\n  - &p {technique: pruning, <<: *p}\n")


# ---- seeds and names ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, data", [
    ("seed", {"seed": 2**32}),
    ("stages[0].training.seed", {"stages": [{"technique": "finetune", "training": {"seed": 2**64}}]}),
])
def test_seeds_are_bounded_below_2_32_at_validation(path, data):
    with pytest.raises(SpecValidationError) as info:
        load_recipe({"stages": [{"technique": "low_rank", "rank": 2}], **data})
    (problem,) = info.value.problems
    assert problem.path == path and problem.allowed == "must be <= 4294967295"
    assert load_recipe({"seed": 2**32 - 1, "stages": [{"technique": "low_rank", "rank": 2}]}).seed == 2**32 - 1


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a\x00b", "..", ".", "a\\b", "x\ny", "é" * 101])
def test_a_name_that_is_no_plain_file_name_is_refused(name):
    with pytest.raises(SpecValidationError) as info:
        load_recipe({"name": name, "stages": [{"technique": "low_rank", "rank": 2}]})
    assert [p.path for p in info.value.problems] == ["name"]


@pytest.mark.parametrize("data, path", [
    ({"export": {"directory": "out\x00/x"}}, "export.directory"),
    ({"model": {"zoo": "tiny-bert", "weights": "w\x00.safetensors"}}, "model.weights"),
])
def test_nul_characters_in_paths_are_refused_at_validation(data, path):
    with pytest.raises(SpecValidationError) as info:
        load_recipe({"stages": [{"technique": "low_rank", "rank": 2}], **data})
    assert [p.path for p in info.value.problems] == [path]


def test_a_dumped_recipe_stays_within_every_bound():
    recipe = load_recipe({"name": "n", "stages": [{"technique": "quantization", "mode": "static",
                                                   "overrides": [{"pattern": f"*l{i}*", "bits": 4} for i in range(40)]}]})
    assert load_recipe(dump_text(recipe, "yaml")) == recipe


@pytest.mark.parametrize("char", ["\x85", "\u2028", "\u2029", "\ufeff", "\x07", "\x1b", "\x9f", "\U0010FFFF"])
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_text_yaml_reads_as_line_breaks_or_marks_round_trips(char, fmt):
    recipe = load_recipe({"description": f"0{char}0", "stages": [{"technique": "low_rank", "rank": 2}]})
    assert load_recipe(dump_text(recipe, fmt)).description == f"0{char}0"  # '0\x850' came back as '0 0'

