#!/usr/bin/env python
"""Turn the conformance report (JSON) into the README capability matrix (Markdown).

Usage::

    pytest conformance_tests                       # writes build/conformance/conformance.json
    python scripts/capability_matrix.py build/conformance/conformance.json --out docs/capability_matrix.md
    python scripts/capability_matrix.py conformance_tests/results/conformance.json --readme README.md

Without --out the matrix is printed. Cells: pass / **FAIL** / - (not claimed) / "passes, not claimed".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, nargs="?", default=Path("build/conformance/conformance.json"))
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown here (atomically)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="replace the block between the capability-matrix markers of this README")
    args = parser.parse_args(argv)
    from unicompress.conformance.report import (agreement_markdown, capability_matrix_markdown, cross_markdown,
                                                first_loss_markdown)

    data = json.loads(args.report.read_text())
    text = capability_matrix_markdown(data)
    text += ("\n### One spec, one meaning: cases where the backends used to disagree\n\n"
             "Overlapping overrides, default and explicit distillation layer maps, and edge values (N:M 63:64, head "
             "sparsity 0.99, blocks larger than a layer, a schedule whose end is off its frequency), distillation losses on "
             "padded rows: each backend's "
             "verdict on the same case (refused: by the core planner, with the same error everywhere).\n\n"
             + agreement_markdown(data))
    first = first_loss_markdown(data)
    if first:
        text += ("\n### The first distillation loss, per backend\n\n"
                 "The loss each backend logs at the first training step, beside the core's float64 numpy value on the "
                 "same weights and batch (`unicompress.reference.distillation`; padded cases: rows end in padding). "
                 "Before the fix TensorFlow summed the layer-map pairs and TensorFlow and Paddle averaged padding in.\n\n"
                 + first)
    if data.get("cross_backend"):
        text += "\n### Cross-backend agreement\n\n" + cross_markdown(data["cross_backend"])
    if args.readme is not None:
        from unicompress.fileio import atomic_write_text

        atomic_write_text(args.readme, replace_block(args.readme.read_text(), "capability-matrix", text))
    elif args.out is None:
        sys.stdout.write(text)
    else:
        from unicompress.fileio import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


def replace_block(document: str, marker: str, body: str) -> str:
    """Replace what lies between ``<!-- MARKER:start -->`` and ``<!-- MARKER:end -->``."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in document or end not in document:
        raise SystemExit(f"the README has no {start} ... {end} block")
    head, rest = document.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body.rstrip()}\n{end}{tail}"


if __name__ == "__main__":
    sys.exit(main())
