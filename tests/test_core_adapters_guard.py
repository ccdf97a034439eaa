"""`adapters` is a folder of distributions, never an import name (it belongs to AdapterHub on PyPI)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _inside_repo(spec) -> bool:
    if spec is None:
        return False
    places = list(spec.submodule_search_locations or []) + ([spec.origin] if spec.origin else [])
    return any(Path(p).resolve().is_relative_to(REPO) for p in places if p and p not in ("namespace", "built-in"))


def test_adapters_folder_has_no_init():
    assert (REPO / "adapters").is_dir()
    assert not (REPO / "adapters" / "__init__.py").exists()


def test_import_adapters_does_not_resolve_into_the_repo_while_tests_run():
    # pytest runs with --import-mode=prepend and no conftest at the root, so the root is not on sys.path
    assert not _inside_repo(importlib.util.find_spec("adapters")), sys.path[:5]


def test_installed_project_does_not_expose_adapters_from_elsewhere():
    code = ("import importlib.util, json; s = importlib.util.find_spec('adapters'); "
            "print(json.dumps(None if s is None else list(s.submodule_search_locations or [s.origin])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/tmp", timeout=60)
    assert out.returncode == 0, out.stderr
    assert str(REPO / "adapters") not in out.stdout
