"""The conformance suite: proves every backend honours every spec it claims, the same way.

Pieces (each its own module): `cases` (the case library, written as code, and the universe of capability
rows), `checks` (one function per property, judged against `unicompress.reference`), `runner` (runs a case
once per backend and caches results), `contract` (claims == passes, refusal before touching, failure
isolation), `templates` (pytest template classes), `plugin` (``-p unicompress.conformance.plugin``),
`report` (Markdown + JSON), `cross_backend` (masks / integers compared across backends, one subprocess
each), `mutants` (deliberately broken adapters that the suite must fail).

Run it against any installed adapter (ours or a third party's)::

    pytest -p unicompress.conformance.plugin --pyargs unicompress.conformance.templates --backend mine

Importing this package imports neither pytest nor any framework.
"""
from .cases import CASES, CASES_BY_ID, Case, Tolerance, cases_for_row, universe
from .runner import CaseRunner, CheckResult

__all__ = ["CASES", "CASES_BY_ID", "Case", "Tolerance", "cases_for_row", "universe", "CaseRunner", "CheckResult"]
