"""The conformance report: backend x capability row (pass / fail / not claimed / passes but not claimed),
per-case check results, the contract checks and the cross-backend agreement matrix, as JSON and Markdown
(written atomically). `scripts/capability_matrix.py` turns the JSON into the README matrix.

Example::

    data = json.loads(Path("build/conformance/conformance.json").read_text())
    print(capability_matrix_markdown(data))
"""
from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ..fileio import atomic_write_text
from .cases import CASES_BY_ID, row_id, universe

#: how a row's status is shown in the Markdown matrix
SYMBOLS = {"pass": "pass", "fail": "**FAIL**", "no case": "**FAIL** (no case)", "not claimed": "-",
           "passes but not claimed": "passes, not claimed", "fails (not claimed)": "-", "not probed": "-",
           "inconclusive": "-", "not run": "claimed, not run", "claimed": "claimed, not run"}


def _row_status(runner: Any, row: tuple) -> dict:
    from ..backend.capabilities import Support

    verdict = runner.verdicts.get(row)
    support = runner.capabilities.support(*row)
    if verdict is not None:
        d = verdict.to_dict()
        d["support"] = support.value
        return d
    return {"status": "not claimed" if support is Support.unsupported else "not run", "detail": "", "cases": [],
            "support": support.value}


def build_report(state: Any) -> dict:
    """Everything the session learnt, as plain data (the JSON report)."""
    from .. import __version__

    rows = list(universe())
    backends: dict[str, Any] = {}
    for name in state.backends:
        runner = state.runners.get(name)
        entry: dict[str, Any] = {"load_error": state.load_errors.get(name)}
        if runner is None:
            backends[name] = entry
            continue
        extra = sorted(runner.claimed_rows - set(rows))
        entry["capabilities"] = runner.capabilities.to_dict()
        entry["rows"] = {row_id(r): _row_status(runner, r) for r in rows + extra}
        cases = {}
        checked = runner.checked()
        for case_id, outcome in runner.ran().items():
            checks = {chk: res.to_dict() for (cid, chk), res in checked.items() if cid == case_id}
            cases[case_id] = {"mode": "probe" if case_id in runner.probed else "claimed",
                              "seconds": round(outcome.seconds, 3), "model": CASES_BY_ID[case_id].model
                              if case_id in CASES_BY_ID else None, "checks": checks,
                              "error": outcome.error}
        entry["cases"] = cases
        entry["contract"] = {k: v.to_dict() for k, v in runner.contract.items()}
        backends[name] = entry
    tests = {state.item_keys.get(nodeid, nodeid): outcome for nodeid, outcome in state.outcomes.items()}
    for name, entry in backends.items():
        mine = [o for k, o in tests.items() if k.startswith(name + "/")]
        entry["tests"] = dict(Counter(mine))
        entry["row_totals"] = dict(Counter(r["status"] for r in entry.get("rows", {}).values()))
    return {"format": 1, "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "unicompress": __version__, "backends": backends, "cross_backend": _cross_summary(state.cross),
            "tests": tests, "universe": [row_id(r) for r in rows]}


def _cross_summary(cross: Any) -> Any:
    if not cross:
        return None
    from .cross_backend import agreement_matrix

    return agreement_matrix(cross)


def capability_matrix_markdown(data: dict) -> str:
    """The README matrix: one row per capability, one column per backend (native/emulated marked)."""
    names = list(data["backends"])
    head = "| capability | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    lines = []
    for rid in data["universe"] + sorted({r for b in data["backends"].values() for r in b.get("rows", {})}
                                         - set(data["universe"])):
        cells = []
        for name in names:
            row = data["backends"][name].get("rows", {}).get(rid)
            if row is None:
                cells.append("?")
                continue
            cell = SYMBOLS.get(row["status"], row["status"])
            if row["status"] == "pass" and row.get("support") == "emulated":
                cell += " (emulated)"
            cells.append(cell)
        lines.append(f"| `{rid}` | " + " | ".join(cells) + " |")
    legend = ("\n\npass: claimed and every conformance case exercising it passes; - : not claimed; "
              "(emulated): done by unicompress with framework ops, not a native kernel.\n")
    return head + "\n".join(lines) + legend


def cross_markdown(cross: Any) -> str:
    if not cross:
        return "_not run (needs two or more backends; disable with --no-cross-backend)_\n"
    out = [f"Tolerance: {cross['tolerance']}\n"]
    for case, pairs in cross["cases"].items():
        out.append(f"**{case}**\n\n| | " + " | ".join(cross["backends"]) + " |\n|---|"
                   + "---|" * len(cross["backends"]))
        for a in cross["backends"]:
            cells = []
            for b in cross["backends"]:
                p = pairs.get(f"{a}|{b}") or pairs.get(f"{b}|{a}")
                cells.append("1.0" if a == b else ("n/a" if p is None else
                                                   f"{p['agreement']:.4f}{'' if p['ok'] else ' **FAIL**'}"))
            out.append(f"| {a} | " + " | ".join(cells) + " |")
        out.append("")
    if cross.get("errors"):
        out.append("Backends that produced nothing: " + "; ".join(f"{k}: {v}" for k, v in cross["errors"].items()))
    return "\n".join(out) + "\n"


#: cases where the backends used to give different results for one spec (issue #12): the table shows each
#: backend's verdict on the same case side by side
AGREEMENT_CASES = ("quantization/overrides-overlapping", "quantization/overrides-skip-then-bits",
                   "distillation/feature-explicit-map", "distillation/feature-drop-first-layer",
                   "distillation/feature-drop-layers-explicit-map", "distillation/feature-minilm-6-to-3",
                   "distillation/user-encoder-feature-mse", "distillation/user-encoder-feature-drop-layers",
                   "pruning/nm-63-64-refused", "pruning/nm-63-64-wide-layers", "pruning/head-99-refused",
                   "pruning/block-64x64-refused", "pruning/polynomial-end-off-frequency",
                   "distillation/padded-feature-mse-and-task", "distillation/padded-feature-cosine",
                   "distillation/padded-relation")


def first_loss_markdown(data: dict) -> str:
    """The first logged distillation loss of every case with a ``first_loss`` check, per backend, beside the
    core's float64 reference: the same number everywhere is what "one meaning" looks like."""
    names = [n for n, b in data["backends"].items() if not b.get("load_error")]
    rows: dict[str, dict[str, Any]] = {}
    for n in names:
        for cid, c in data["backends"][n].get("cases", {}).items():
            r = c.get("checks", {}).get("first_loss")
            if c.get("mode") == "claimed" and r and r.get("numbers"):
                row = rows.setdefault(cid, {"reference": r["numbers"].get("reference")})
                row[n] = (r["numbers"].get("first_loss"), r.get("passed"))
    if not rows:
        return ""
    lines = ["| case | reference | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for cid in sorted(rows):
        cells = []
        for n in names:
            got = rows[cid].get(n)
            cells.append("-" if got is None else f"{got[0]:.6f}" + ("" if got[1] is not False else " **FAIL**"))
        lines.append(f"| `{cid}` | {rows[cid]['reference']:.6f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def agreement_markdown(data: dict, case_ids: Sequence[str] = AGREEMENT_CASES) -> str:
    """One row per case, one column per backend: "pass", "refused" (by the core planner, the same error on
    every backend), "**FAIL**" (a check failed) or "-" (not claimed / not run there)."""
    names = [n for n, b in data["backends"].items() if not b.get("load_error")]
    lines = ["| case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for cid in case_ids:
        cells = []
        for n in names:
            c = data["backends"][n].get("cases", {}).get(cid)
            if c is None or c.get("mode") != "claimed":
                cells.append("-")
                continue
            checks = c.get("checks", {})
            ok = bool(checks) and all(r.get("passed") is not False for r in checks.values())  # None: n/a
            cells.append(("refused" if "refused" in checks else "pass") if ok else "**FAIL**")
        lines.append(f"| `{cid}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_lines(data: dict) -> list[str]:
    lines = []
    for name, b in data["backends"].items():
        if b.get("load_error"):
            lines.append(f"{name}: cannot be loaded: {b['load_error']}")
            continue
        t, r = b.get("tests", {}), b.get("row_totals", {})
        lines.append(f"{name}: tests {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                     f"{t.get('skipped', 0)} skipped, {t.get('xfailed', 0)} xfailed; rows "
                     + ", ".join(f"{v} {k}" for k, v in sorted(r.items())))
    return lines


def to_markdown(data: dict) -> str:
    out = [f"# unicompress conformance report\n\nGenerated {data['generated']} by unicompress "
           f"{data['unicompress']}.\n", "## Summary\n"]
    out += [f"- {line}" for line in summary_lines(data)]
    out += ["", "## Capability matrix\n", capability_matrix_markdown(data), "## Cross-backend agreement\n",
            "Same weights, same spec, each backend in its own process: fraction of equal mask entries / "
            "integer weights.\n", cross_markdown(data.get("cross_backend"))]
    for name, b in data["backends"].items():
        out.append(f"## {name}\n")
        bad_rows = {k: v for k, v in b.get("rows", {}).items() if v["status"] in ("fail", "no case",
                                                                                   "passes but not claimed")}
        if bad_rows:
            out.append("| row | status | detail |\n|---|---|---|")
            out += [f"| `{k}` | {v['status']} | {v['detail'][:300].replace('|', '/')} |" for k, v in bad_rows.items()]
            out.append("")
        for key, res in b.get("contract", {}).items():
            mark = {True: "pass", False: "**FAIL**", None: "skipped"}[res["passed"]]
            out.append(f"- contract `{key}`: {mark} — {res['message'][:300]}")
        out.append("\n| case | mode | s | checks | failing |\n|---|---|---|---|---|")
        for cid, c in sorted(b.get("cases", {}).items()):
            checks = c["checks"]
            ok = sum(1 for v in checks.values() if v["passed"])
            failing = ", ".join(k for k, v in checks.items() if v["passed"] is False)
            out.append(f"| {cid} | {c['mode']} | {c['seconds']:.1f} | {ok}/{len(checks)} | {failing} |")
        out.append("")
    return "\n".join(out) + "\n"


def write_report(data: dict, directory: Path) -> dict:
    """Write conformance.json and conformance.md atomically; returns their paths and the data."""
    directory = Path(directory)
    json_path = atomic_write_text(directory / "conformance.json", json.dumps(data, indent=1, sort_keys=False,
                                                                              default=str))
    md_path = atomic_write_text(directory / "conformance.md", to_markdown(data))
    return {"json": json_path, "markdown": md_path, "data": data}
