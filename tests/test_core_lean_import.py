"""`import unicompress` imports no framework, and works when none is installed."""
import subprocess
import sys
import textwrap

BLOCK = textwrap.dedent("""
    import sys, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in {'torch', 'tensorflow', 'paddle', 'paddleslim', 'keras', 'tf_keras', 'torchao',
                                      'onnx', 'onnxruntime'}:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
    sys.meta_path.insert(0, Block())
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)


def test_import_pulls_no_framework():
    out = _run("import sys, unicompress, unicompress.api, unicompress.cli, unicompress.reference, unicompress.zoo, "
               "unicompress.backend, unicompress.report\n"
               "print(sorted({'torch','tensorflow','paddle','paddleslim','keras'} & set(sys.modules)))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_works_with_no_framework_installed():
    code = BLOCK + textwrap.dedent("""
        import unicompress as uc
        r = uc.load_recipe({'stages': [{'technique': 'pruning', 'sparsity': 0.5}]})
        from unicompress.cli import main
        main(['schema', '-o', '/dev/null'])
        print('ok', r.stages[0].sparsity)
    """)
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok 0.5")


def test_a_backend_without_its_framework_names_the_pip_command():
    code = BLOCK + textwrap.dedent("""
        from unicompress.backend import available_backends, get_backend
        from unicompress.errors import MissingFrameworkError
        names = available_backends()
        if not names:
            print('none'); raise SystemExit
        adapter = get_backend(names[0])
        adapter.capabilities()   # pure data: must work without the framework
        try:
            adapter.require(*adapter.framework_modules[:1])
        except MissingFrameworkError as exc:
            print('MSG', exc)
    """)
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("none") or "pip install" in out.stdout
