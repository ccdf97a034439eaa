"""The command line: factories run only when allowed, `validate --backend` refuses what `run` refuses, one bad
file never stops a batch, and the frameworks' import noise is filtered without hiding real errors."""
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from unicompress.backend import register, unregister
from unicompress.cli import is_noise, main
from unicompress.errors import Problem

from numpy_adapter import NumpyAdapter

FACTORY_MODULE = textwrap.dedent('''
    """A factory module that leaves a trace of being imported and of being called."""
    import pathlib
    import numpy as np
    from unicompress.backend.types import TaskData
    from numpy_adapter import NumpyMLP

    HERE = pathlib.Path(__file__).parent
    (HERE / "imported").write_text("yes")


    def build(backend="", **kwargs):
        (HERE / "called").write_text("build")
        return NumpyMLP()


    def data():
        (HERE / "called").write_text("data")
        x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
        return TaskData(calibration=lambda: iter([{"x": x}]), evaluation=lambda: iter([({"x": x}, np.zeros(8, np.int64))]),
                        num_labels=3)


    def _hidden(backend=""):
        (HERE / "called").write_text("hidden")
''')


class Refusing(NumpyAdapter):
    """The numpy backend with one combination it refuses (pure data, like a real backend's `refusals`)."""

    def refusals(self, spec):
        if getattr(spec, "sparsity", 0) and spec.sparsity > 0.8:
            return [Problem("sparsity", spec.sparsity, "this backend prunes at most 80%")]
        return []


@pytest.fixture
def backend():
    register("numpy-test", Refusing, replace=True)
    yield
    unregister("numpy-test")


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A fresh factory module on sys.path; returns (its name, its folder)."""
    name = f"uc_factories_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / f"{name}.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("UNICOMPRESS_ALLOW_FACTORIES", raising=False)
    return name, folder


def _recipe(tmp_path, body: str, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _factory_recipe(tmp_path, module: str, attr: str = "build"):
    return _recipe(tmp_path, f"""
        name: viafactory
        backend: numpy-test
        model: {{factory: "{module}:{attr}"}}
        data: {{factory: "{module}:data"}}
        stages: [{{technique: pruning, sparsity: 0.5}}]
        export: {{formats: [onnx], directory: "{tmp_path / 'out'}"}}
    """)


# ---- 4. recipes are data ------------------------------------------------------------------------------------------
def test_a_factory_that_is_not_allowed_is_never_imported_nor_called(backend, factories, tmp_path, capsys):
    module, folder = factories
    path = _factory_recipe(tmp_path, module)
    assert main(["validate", str(path)]) == 0  # the recipe as data: fine, and nothing imported
    assert main(["validate", str(path), "--backend", "numpy-test"]) == 2
    out = capsys.readouterr().out
    assert f"model.factory: got '{module}:build'; module '{module}' is not allowed" in out
    assert f"--allow-factory {module}" in out and "UNICOMPRESS_ALLOW_FACTORIES" in out
    assert main(["run", str(path)]) == 2
    assert "is not allowed to run code from a recipe" in capsys.readouterr().err
    assert not (folder / "imported").exists() and not (folder / "called").exists()


def test_validate_imports_an_allowed_factory_but_never_calls_it(backend, factories, tmp_path, capsys):
    module, folder = factories
    path = _factory_recipe(tmp_path, module)
    assert main(["validate", str(path), "--backend", "numpy-test", "--allow-factory", module]) == 0, \
        capsys.readouterr()
    assert (folder / "imported").exists() and not (folder / "called").exists()


def test_run_calls_factories_allowed_by_the_environment(backend, factories, tmp_path, monkeypatch, capsys):
    module, folder = factories
    monkeypatch.setenv("UNICOMPRESS_ALLOW_FACTORIES", f"some.other, {module}")
    assert main(["run", str(_factory_recipe(tmp_path, module)), "--no-progress"]) == 0, capsys.readouterr().err
    assert (folder / "called").read_text() == "build"
    assert (tmp_path / "out" / "viafactory.onnx").exists() and (tmp_path / "out" / "report.json").exists()


def test_private_functions_are_never_factories(backend, factories, tmp_path, capsys):
    module, folder = factories
    path = _factory_recipe(tmp_path, module, "_hidden")
    assert main(["run", str(path), "--allow-factory", module]) == 2
    assert "'_hidden' is private" in capsys.readouterr().err and not (folder / "called").exists()


# ---- 8. validate --backend refuses what run refuses ------------------------------------------------------------
def test_validate_with_a_backend_makes_every_check_run_makes(backend, tmp_path, capsys):
    (tmp_path / "out").write_text("a file where the export folder goes")
    bad_weights = tmp_path / "w.safetensors"
    bad_weights.write_bytes(b"\x00" * 32)
    path = _recipe(tmp_path, f"""
        backend: numpy-test
        model: {{zoo: tiny-bert, weights: "{bad_weights}"}}
        stages: [{{technique: pruning, sparsity: 0.9}}]
        export: {{formats: [onnx], directory: "{tmp_path / 'out'}"}}
    """)
    assert main(["validate", str(path), "--backend", "numpy-test"]) == 2
    out = capsys.readouterr().out
    for fragment in ("stages[0].sparsity: got 0.9; this backend prunes at most 80%",  # refusals()
                     "model.weights: got", "not a valid safetensors file",  # the weights file
                     "the ONNX export needs example inputs: add a data: section",  # data for the export
                     "export.directory: got", "is a file; the exports need a folder there"):  # the folder
        assert fragment in out, (fragment, out)
    assert main(["run", str(path)]) == 2  # and run refuses the very same, before building anything
    err = capsys.readouterr().err
    assert "this backend prunes at most 80%" in err and "is a file; the exports need a folder there" in err


def test_one_bad_file_never_stops_the_batch(backend, tmp_path, capsys):
    good = _recipe(tmp_path, "stages: [{technique: pruning, sparsity: 0.5}]\n", "good.yaml")
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    unknown = _recipe(tmp_path, "backend: nope\nstages: [{technique: pruning, sparsity: 0.5}]\n", "unknown.yaml")
    files = [tmp_path / "folder.yaml", tmp_path / "binary.yaml", tmp_path / "missing.yaml", unknown, good]
    assert main(["validate", *map(str, files)]) == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "folder.yaml: INVALID" in text and "is a directory" in text
    assert "binary.yaml: INVALID" in text and "not UTF-8 text" in text
    assert "missing.yaml: INVALID" in text and "file not found" in text
    assert "unknown.yaml: no backend named 'nope'" in text
    assert f"{good}: ok (1 stage(s): pruning)" in captured.out  # the last file was still checked


# ---- 11. framework noise ----------------------------------------------------------------------------------------
NOISE_LINES = [
    "Failed to load /v/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not "
    "load this library: /v/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so",
    "W1202 06:39:23.791000 16385 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum subclass and is "
    "now natively supported by torch.compile as an opaque value type. Calling register_constant() on Enum "
    "subclasses is deprecated and will be an error in a future release.",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796193570.020917   16503 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796193570.021958   16503 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
    "RuntimeError: module compiled against ABI version 0x1000009 but this version of numpy is 0x2000000",
    "E0000 00:00:1796193574.367691   16503 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
]
REAL_LINES = [
    "error: stage 0 (pruning) failed: RuntimeError: shapes do not match",
    "Traceback (most recent call last):",
    "RuntimeError: module compiled against something else entirely",
    "E0000 00:00:1796193574.367691   16503 some_kernel.cc:52] out of memory",
    "W1202 06:39:23.791000 16385 torch/_dynamo/convert_frame.py:1] a real torch warning",
    "F0000 00:00:1.0 1 check.cc:1] Check failed: x == y",
]


def test_noise_lines_are_recognised_and_real_errors_are_not():
    assert all(is_noise(line) for line in NOISE_LINES)
    assert not any(is_noise(line) for line in REAL_LINES)


CHILD = textwrap.dedent("""
    import os, sys
    mode = sys.argv.pop(1)
    if os.environ.get("UNICOMPRESS_CLI_CHILD") or os.environ.get("UNICOMPRESS_RAW_STDERR"):  # where the work runs
        os.write(2, ("\\n".join({noise!r}) + "\\n").encode())  # the frameworks write below Python
        print({real!r}, file=sys.stderr)
    if os.environ.get("UNICOMPRESS_CLI_CHILD") and mode == "exit0":
        os._exit(0)  # what LAPACK's xerbla does after "parameter 4 had an illegal value"
    if os.environ.get("UNICOMPRESS_CLI_CHILD") and mode == "segv":
        import signal
        os.kill(os.getpid(), signal.SIGSEGV)
    sys.argv = ["unicompress", "schema", "-o", os.devnull]
    from unicompress.cli import main
    sys.exit(main())
""").format(noise=NOISE_LINES, real=REAL_LINES[0])


def _command(mode: str, raw: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNICOMPRESS_")}
    if raw:
        env["UNICOMPRESS_RAW_STDERR"] = "1"
    return subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=env, timeout=120)


def test_the_command_filters_framework_noise_but_keeps_real_errors():
    done = _command("ok")
    assert done.returncode == 0, done.stderr
    assert REAL_LINES[0] in done.stderr
    assert not any(line in done.stderr for line in NOISE_LINES), done.stderr
    raw = _command("ok", raw=True)  # UNICOMPRESS_RAW_STDERR=1 shows everything
    assert all(line in raw.stderr for line in NOISE_LINES) and raw.returncode == 0


def test_a_process_ended_with_status_0_before_finishing_is_a_failure():
    done = _command("exit0")
    assert done.returncode == 3
    assert "ended with status 0 before the command finished" in done.stderr and REAL_LINES[0] in done.stderr


def test_a_crash_is_reported_with_its_signal():
    done = _command("segv")
    assert done.returncode == 128 + 11 and "killed by signal SIGSEGV" in done.stderr
