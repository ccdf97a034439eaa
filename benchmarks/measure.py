"""Measurements shared by the benchmarks and the examples: ONNX Runtime latency and accuracy, sizes, memory.

Latency is measured on one runtime for every backend (ONNX Runtime, CPU, fixed intra-op threads,
one inter-op thread) by the core's `unicompress.bench.measure_latency`: the median of `runs` timed
runs after two untimed ones, on real test inputs.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]


def slice_batch(inputs: Inputs, n: int) -> Inputs:
    """The first `n` examples of a batch (repeated cyclically when the batch is smaller)."""
    def cut(a: np.ndarray) -> np.ndarray:
        idx = np.arange(n) % a.shape[0]
        return np.ascontiguousarray(a[idx])
    if isinstance(inputs, Mapping):
        return {k: cut(np.asarray(v)) for k, v in inputs.items()}
    return cut(np.asarray(inputs))


def onnx_latencies_ms(paths: Sequence[Union[str, Path]], inputs: Inputs, batch: int, threads: int = 2,
                      runs: int = 7) -> list[float]:
    """Median ORT latencies of several files on the same `batch` examples, timed in turn run by run
    (`unicompress.bench.measure_latencies`) so the ratios between them are steady under load."""
    from unicompress.bench import measure_latencies

    feeds = slice_batch(inputs, batch)
    first = next(iter(feeds.values())) if isinstance(feeds, Mapping) else feeds
    length = int(first.shape[1]) if first.ndim > 1 else 1
    return [lat.median_ms for lat in measure_latencies(paths, batch, length, threads, runs, inputs=feeds)]


def onnx_accuracy(path: Union[str, Path], batches: Iterable[tuple[Inputs, np.ndarray]], threads: int = 2) -> float:
    """Accuracy of the exported graph itself (argmax of its first output) over (inputs, labels) batches."""
    from unicompress.onnx.runtime import make_session, run_onnx

    session = make_session(path, threads)
    correct = total = 0
    for x, y in batches:
        pred = run_onnx(session, x).argmax(-1)
        correct += int((pred == np.asarray(y)).sum())
        total += int(np.asarray(y).shape[0])
    return correct / total if total else float("nan")


def file_mb(path: Union[str, Path]) -> float:
    """Size of a file (or of every file under a folder, e.g. ONNX external data) in MB (10^6 bytes)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    extra = [p for p in path.parent.glob(path.name + ".data")]  # external-data sidecar, if any
    return (path.stat().st_size + sum(p.stat().st_size for p in extra)) / 1e6


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def current_rss_mb() -> float:
    """Resident memory now, in MB (from /proc; falls back to the peak elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> "Timer":
        self._t0 = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0


def ratio(before: Optional[float], after: Optional[float]) -> Optional[float]:
    """before / after (how many times smaller or faster), or None when either is missing or zero."""
    if before is None or after is None or not after:
        return None
    return before / after
