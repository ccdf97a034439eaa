"""Cross-backend agreement: the same weights and the same spec give the same masks and integer weights on
every backend. Each backend runs in its own subprocess (TensorFlow imported before Paddle in one process
segfaults) and writes plain arrays to an .npz (no pickle); the parent compares them pairwise.

Worker (one backend)::

    python -m unicompress.conformance.cross_backend --backend torch --out torch.npz

Tolerances (CROSS_TOLERANCE): masks must agree on at least 99.9% of positions (zoo weights have no ties,
but float32 and float64 magnitude scores can order near-equal weights differently); integer weights may
differ by at most 1 (rounding of values within float error of a .5 boundary) on at most 0.5% of entries.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

#: the one-shot cases whose masks / integers are compared (ids of unicompress.conformance.cases)
CROSS_CASES = ("pruning/unstructured-50", "pruning/unstructured-global-50", "pruning/nm-2-4",
               "pruning/block-4x4-50", "pruning/neuron-l1-50-zeroed", "pruning/head-l1-50-zeroed",
               "quantization/weight-only-int8-per-channel", "quantization/weight-only-int8-per-tensor-asym",
               "quantization/weight-only-4bit", "quantization/dynamic-int8", "quantization/static-int8-minmax")
MASK_MIN_AGREEMENT = 0.999
INT_MAX_DIFF = 1
INT_MAX_MISMATCH = 0.005
CROSS_TOLERANCE = (f"masks agree on >= {MASK_MIN_AGREEMENT:.1%} of positions; integer weights differ by at most "
                   f"{INT_MAX_DIFF} on at most {INT_MAX_MISMATCH:.1%} of entries")
_SEP = "::"


def _key(case: str, kind: str, layer: str) -> str:
    return _SEP.join((case.replace("/", "~"), kind, layer))


def compute(backend: str, case_ids: Iterable[str] = CROSS_CASES) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Run the claimed cross cases on one backend in this process: {key: array}, {case: error}."""
    from ..backend.adapter import StageContext
    from ..backend.registry import get_backend
    from .cases import CASES_BY_ID, task_data
    from .runner import CaseRunner

    runner = CaseRunner(get_backend(backend))
    a = runner.adapter
    arrays: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    for cid in case_ids:
        case = CASES_BY_ID[cid]
        if not runner.claims(case):
            continue
        try:
            model = a.build_model(case.model, seed=0)
            names = [layer.name for layer in case.spec.selector.select(a.layers(model))]
            out = a.apply(a.copy(model), case.spec, task_data(case.model), StageContext())
            if case.technique == "pruning":
                for n, w in a.weights(out, names).items():
                    arrays[_key(cid, "mask", n)] = (np.asarray(w) != 0).astype(np.uint8)
            else:
                for n, t in a.quantized_weights(out).items():
                    arrays[_key(cid, "q", n)] = np.asarray(t.q, np.int64)
        except Exception as exc:  # noqa: BLE001 - reported, and the other cases still run
            errors[cid] = f"{type(exc).__name__}: {exc}"[:500]
    return arrays, errors


def save(path: Path, arrays: dict[str, np.ndarray], errors: dict[str, str]) -> Path:
    """Write the arrays (and the errors as a unicode array) to an .npz atomically, without pickle."""
    from ..fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, __errors__=np.array(json.dumps(errors)), **arrays)
    return Path(path)


def load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__errors__"}
        errors = json.loads(str(z["__errors__"])) if "__errors__" in z.files else {}
    return arrays, errors


def collect(backends: Iterable[str], workdir: Path, timeout: float = 600) -> dict:
    """Run one worker subprocess per backend (two at a time) and gather what they wrote."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1")
    result: dict[str, Any] = {"backends": list(backends), "arrays": {}, "errors": {}, "case_errors": {}}
    pending = list(result["backends"])
    while pending:
        batch, pending = pending[:2], pending[2:]
        procs = {}
        for b in batch:
            out = workdir / f"{b}.npz"
            if out.exists():
                out.unlink()
            procs[b] = (subprocess.Popen([sys.executable, "-m", "unicompress.conformance.cross_backend",
                                          "--backend", b, "--out", str(out)], env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True), out)
        for b, (proc, out) in procs.items():
            try:
                log, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                log, _ = proc.communicate()
            if proc.returncode != 0 or not out.exists():
                result["errors"][b] = f"worker exited {proc.returncode}: {(log or '').strip()[-400:]}"
                continue
            result["arrays"][b], result["case_errors"][b] = load(out)
    return result


def judge_pairs(cross: dict, case_id: str) -> list[dict]:
    """Pairwise agreement of one case's masks / integers between the backends that produced it."""
    prefix = case_id.replace("/", "~") + _SEP
    have = {b: {k[len(prefix):]: v for k, v in arrs.items() if k.startswith(prefix)}
            for b, arrs in cross["arrays"].items()}
    have = {b: v for b, v in have.items() if v}
    pairs = []
    for a, b in itertools.combinations(sorted(have), 2):
        pairs.append(compare(have[a], have[b]) | {"a": a, "b": b})
    return pairs


def compare(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> dict:
    """Agreement of two backends' arrays of one case (keys 'mask::layer' or 'q::layer')."""
    equal = total = 0
    fails = []
    only = sorted(set(x) ^ set(y))
    if only:  # one backend compressed layers the other left alone (e.g. the classifier head)
        fails.append(f"compressed by one backend only: {only[:3]}{' ...' if len(only) > 3 else ''}")
    for k in sorted(set(x) & set(y)):
        u, v = x[k], y[k]
        if u.shape != v.shape:
            fails.append(f"{k}: shapes {u.shape} / {v.shape}")
            continue
        equal += int((u == v).sum())
        total += u.size
        if k.startswith("mask"):
            agree = float((u == v).mean())
            if agree < MASK_MIN_AGREEMENT:
                fails.append(f"{k}: masks agree on {agree:.4f}")
        else:
            diff = np.abs(u.astype(np.int64) - v.astype(np.int64))
            if diff.max() > INT_MAX_DIFF or (diff > 0).mean() > INT_MAX_MISMATCH:
                fails.append(f"{k}: integers differ at {(diff > 0).mean():.2%} (max {int(diff.max())})")
    agreement = equal / total if total else 0.0
    return {"ok": not fails, "agreement": agreement, "detail": "; ".join(fails[:3]) or f"{agreement:.4f} equal"}


def agreement_matrix(cross: dict) -> dict:
    """{case: {"a|b": pair}} for every cross case, plus the tolerance and worker errors (for the report)."""
    cases = {}
    for cid in CROSS_CASES:
        pairs = judge_pairs(cross, cid)
        if pairs:
            cases[cid] = {f"{p['a']}|{p['b']}": {k: p[k] for k in ("agreement", "ok", "detail")} for p in pairs}
    errors = dict(cross.get("errors", {}))
    for b, errs in cross.get("case_errors", {}).items():
        for cid, msg in errs.items():
            errors[f"{b}/{cid}"] = msg
    return {"backends": sorted(cross["arrays"]), "tolerance": CROSS_TOLERANCE, "cases": cases, "errors": errors}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--cases", default=",".join(CROSS_CASES), help="comma-separated case ids")
    args = parser.parse_args(argv)
    arrays, errors = compute(args.backend, [c for c in args.cases.split(",") if c])
    save(args.out, arrays, errors)
    print(f"{args.backend}: {len(arrays)} arrays, {len(errors)} case errors -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
