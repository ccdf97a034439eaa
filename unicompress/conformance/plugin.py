"""The pytest plugin of the conformance suite. Enable it with ``-p unicompress.conformance.plugin``
(it is not auto-loaded into other pytest runs).

It parametrizes the template classes of `unicompress.conformance.templates` over the selected backends
(``--backend NAME``, repeatable; default: every backend of the `unicompress.backends` entry points),
applies the xfail file, and writes the Markdown + JSON report at the end of the session.
"""
from __future__ import annotations

import fnmatch
import importlib
import os
from pathlib import Path
from typing import Any, Optional

import pytest

from .cases import CASES, Case, row_id, universe
from .runner import CaseRunner

_STATE = pytest.StashKey["ConformanceState"]()
#: frameworks that must load before the others in one process (TensorFlow then Paddle segfaults, STACK.md)
IMPORT_FIRST = ("paddle",)


class ConformanceState:
    """Per-session state: the selected backends, one CaseRunner each, the xfail patterns, cross results."""

    def __init__(self, config: pytest.Config):
        from ..backend.registry import available_backends

        self.config = config
        chosen = [b for opt in (config.getoption("conformance_backend") or []) for b in opt.split(",") if b]
        self.backends: list[str] = chosen or available_backends()
        self.runners: dict[str, CaseRunner] = {}
        self.load_errors: dict[str, str] = {}
        self.xfail = load_xfail(config.getoption("conformance_xfail"))
        self.cross: Optional[dict] = None
        self.outcomes: dict[str, str] = {}  # nodeid -> passed/failed/skipped/xfailed/xpassed
        self.item_keys: dict[str, str] = {}
        report = config.getoption("conformance_report")
        self.report_dir = Path(report) if report else Path(str(config.rootpath)) / "build" / "conformance"

    def runner(self, name: str) -> CaseRunner:
        if name not in self.runners:
            from ..backend.registry import get_backend

            self.runners[name] = CaseRunner(get_backend(name))
        return self.runners[name]

    def import_in_safe_order(self) -> None:
        """Load frameworks that must come first (Paddle) before any other selected backend's."""
        from ..backend.registry import get_backend

        for name in self.backends:
            try:
                adapter = get_backend(name)
            except Exception as exc:  # reported by the tests of that backend
                self.load_errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            for module in IMPORT_FIRST:
                if module in adapter.framework_modules:
                    try:
                        importlib.import_module(module)
                    except ImportError as exc:
                        self.load_errors[name] = f"{module} cannot be imported: {exc}"


def load_xfail(path: Optional[str]) -> dict[str, str]:
    """pattern -> reason from a YAML (or JSON) mapping; patterns are shell globs."""
    if not path:
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise pytest.UsageError(f"{path}: the xfail file must map glob pattern -> reason")
    return {str(k): str(v) for k, v in data.items()}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unicompress", "unicompress conformance suite")
    group.addoption("--backend", action="append", dest="conformance_backend", default=None,
                    help="backend to test (repeatable or comma-separated); default: every installed backend")
    group.addoption("--conformance-report", dest="conformance_report", default=os.environ.get(
        "UNICOMPRESS_CONFORMANCE_REPORT"), help="directory for conformance.md / conformance.json "
                    "(default: <rootdir>/build/conformance)")
    group.addoption("--conformance-xfail", dest="conformance_xfail", default=None,
                    help="YAML file mapping glob pattern -> reason; matching tests are expected to fail")
    group.addoption("--strict-claims", dest="conformance_strict_claims", action="store_true",
                    help="fail when a row passes its probe but the backend does not claim it")
    group.addoption("--no-probe", dest="conformance_probe", action="store_false", default=True,
                    help="do not try rows the backend does not claim")
    group.addoption("--no-cross-backend", dest="conformance_cross", action="store_false", default=True,
                    help="skip the cross-backend comparison (one subprocess per backend)")


def pytest_configure(config: pytest.Config) -> None:
    state = ConformanceState(config)
    config.stash[_STATE] = state
    state.import_in_safe_order()


def state_of(config: pytest.Config) -> ConformanceState:
    return config.stash[_STATE]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    state = metafunc.config.stash.get(_STATE, None)
    if state is None:
        return
    names = metafunc.fixturenames
    if "conformance_runner" in names:
        metafunc.parametrize("backend_name", state.backends, ids=state.backends)
    if "case" in names:
        technique = getattr(metafunc.cls, "technique", "")
        check = metafunc.function.__name__[len("test_"):]
        cases = [c for c in CASES if c.technique == technique and check in c.checks]
        # a case over a real-size model (Case.slow) runs only in the slow run, like any slow test
        metafunc.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                      for c in cases])
    if "row" in names:
        rows = list(universe())
        for name in state.backends:
            try:
                extra = sorted(state.runner(name).claimed_rows - set(rows))
            except Exception:
                continue
            rows += [r for r in extra if r not in rows]
        metafunc.parametrize("row", rows, ids=[row_id(r) for r in rows])
    if "cross_case" in names:
        from .cross_backend import CROSS_CASES

        metafunc.parametrize("cross_case", list(CROSS_CASES), ids=list(CROSS_CASES))


@pytest.fixture
def conformance_runner(request: pytest.FixtureRequest, backend_name: str) -> CaseRunner:
    """The CaseRunner of the backend under test (cached for the session)."""
    state = state_of(request.config)
    if backend_name in state.load_errors:
        pytest.fail(f"backend {backend_name!r} cannot be loaded: {state.load_errors[backend_name]}")
    return state.runner(backend_name)


@pytest.fixture(scope="session")
def cross_backend_results(request: pytest.FixtureRequest) -> dict:
    """Masks and integer weights from every selected backend, each computed in its own subprocess."""
    state = state_of(request.config)
    if not request.config.getoption("conformance_cross"):
        pytest.skip("cross-backend comparison disabled (--no-cross-backend)")
    if len(state.backends) < 2:
        pytest.skip("cross-backend comparison needs at least two backends")
    if state.cross is None:
        from .cross_backend import collect

        state.cross = collect(state.backends, state.report_dir / "cross")
    return state.cross


def item_key(item: pytest.Item) -> Optional[str]:
    """The xfail/report key of a conformance test: backend/case-id/check, backend/row/..., backend/contract/..."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    backend = params.get("backend_name")
    name = getattr(item, "originalname", item.name)
    if "cross_case" in params:
        return f"cross/{params['cross_case']}"
    if backend is None:
        return None
    if isinstance(params.get("case"), Case):
        return f"{backend}/{params['case'].id}/{name[len('test_'):]}"
    if "row" in params:
        return f"{backend}/row/{row_id(params['row'])}/{'probe' if 'probe' in name else 'claimed'}"
    return f"{backend}/contract/{name[len('test_'):]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    for item in items:
        key = item_key(item)
        if key is None:
            continue
        state.item_keys[item.nodeid] = key
        for pattern, reason in state.xfail.items():
            if fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(item.nodeid, pattern):
                item.add_marker(pytest.mark.xfail(reason=f"{reason} [xfail file: {pattern}]", strict=False))
                break


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any):
    report = yield
    state = item.config.stash.get(_STATE, None)
    if state is not None and item.nodeid in state.item_keys and (report.when == "call" or report.outcome != "passed"):
        status = "xfailed" if hasattr(report, "wasxfail") and report.skipped else \
            "xpassed" if hasattr(report, "wasxfail") else report.outcome
        state.outcomes[item.nodeid] = status
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None or not state.outcomes:
        return
    from .report import build_report, write_report

    data = build_report(state)
    state.written = write_report(data, state.report_dir)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    written = getattr(state, "written", None)
    if not written:
        return
    from .report import summary_lines

    terminalreporter.section("unicompress conformance")
    for line in summary_lines(written["data"]):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"report: {written['markdown']} and {written['json']}")
