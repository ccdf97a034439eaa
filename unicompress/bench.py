"""Latency of ONNX files in ONNX Runtime, measured as ratios in one run (the measuring stick of DESIGN.md)."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from .onnx.runtime import feeds_for, make_session


@dataclass(frozen=True)
class Latency:
    """Median and spread of repeated runs of one file at one batch size."""

    path: str
    batch: int
    length: int
    threads: int
    median_ms: float
    p90_ms: float
    runs: int
    size_mb: float

    def to_dict(self) -> dict:
        return asdict(self)


def synthetic_inputs(session, batch: int, length: int, seed: int = 0, vocab: int = 1000) -> dict[str, np.ndarray]:
    """Inputs of the declared names and types: token ids below `vocab` (1000 is valid in any BERT
    vocabulary), an all-ones attention mask, images in [0, 1) of the declared spatial size."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in session.get_inputs():
        dims = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
        if "mask" in spec.name:
            out[spec.name] = np.ones((batch, length), np.int64)
        elif "int" in spec.type:
            out[spec.name] = (rng.integers(0, vocab, (batch, length)) if "type" not in spec.name
                              else np.zeros((batch, length))).astype(np.int64)
        else:
            shape = [batch] + [d or length for d in dims[1:]]
            out[spec.name] = rng.random(shape, dtype=np.float32)
    return out


def measure_latency(path: Union[str, Path], batch: int = 1, length: int = 128, threads: int = 2,
                    runs: int = 7, warmup: int = 2, inputs: Optional[Mapping[str, np.ndarray]] = None) -> Latency:
    """Median wall time of `runs` ORT runs after `warmup` runs.

    Example: ``measure_latency("model.onnx", batch=32).median_ms``.
    """
    return measure_latencies([path], batch, length, threads, runs, warmup, inputs)[0]


def measure_latencies(paths: Sequence[Union[str, Path]], batch: int = 1, length: int = 128, threads: int = 2,
                      runs: int = 7, warmup: int = 2, inputs: Optional[Mapping[str, np.ndarray]] = None
                      ) -> list[Latency]:
    """Latency of several files measured run by run in turn (file A, file B, file A, ...).

    Every session is open at once and each round times one run of every file, so a change of load on
    a shared machine falls on all of them alike and their ratios stay steady. The sessions do not spin
    (``allow_spinning=0``): an idle session's busy-waiting threads would slow the next file's run
    (measured on MiniLM, batch 32, 2 threads: FP32 312 ms and int8 173 ms with spinning sessions
    interleaved, 279 ms and 137 ms without; one file at a time with ORT's default spinning: 275 and 143 ms).

    Example: ``base, q = measure_latencies(["fp32.onnx", "int8.onnx"], batch=32)``.
    """
    sessions = [make_session(p, threads, spinning=False) for p in paths]
    feeds = [feeds_for(s, inputs) if inputs is not None else synthetic_inputs(s, batch, length) for s in sessions]
    times = interleaved_times([lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds)], runs, warmup)
    return [Latency(str(path), batch, length, threads, median(ts), p90(ts), runs, Path(path).stat().st_size / 1e6)
            for path, ts in zip(paths, times)]


def interleaved_times(calls: Sequence[Callable[[], object]], runs: int, warmup: int = 2) -> list[list[float]]:
    """Milliseconds of `runs` calls of each callable, timed in rounds (A, B, C, A, B, C, ...) after `warmup`
    untimed calls of each: a change of machine load falls on every callable alike, so their ratios stay steady.

    Example: ``fp32_ms, int8_ms = interleaved_times([lambda: a.run(None, x), lambda: b.run(None, x)], 7)``.
    """
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            call()
            times[i].append((time.perf_counter() - t0) * 1000)
    return times


def median(ms: Sequence[float]) -> float:
    """The median of timed runs."""
    return float(statistics.median(ms))


def p90(ms: Sequence[float]) -> float:
    """The 90th percentile of timed runs (the run at index int(0.9 n) in sorted order)."""
    ts = sorted(ms)
    return float(ts[min(len(ts) - 1, int(0.9 * len(ts)))])


def compare_latency(baseline: Union[str, Path], candidates: Sequence[Union[str, Path]],
                    batches: Sequence[int] = (1, 32), length: int = 128, threads: int = 2,
                    runs: int = 7) -> list[dict]:
    """Rows of latency and size for each file and batch, with the speed-up against `baseline`.

    Runs alternate between the files (`measure_latencies`) so that machine load affects both sides of
    a ratio alike.
    """
    rows = []
    for batch in batches:
        base, *others = measure_latencies([baseline, *candidates], batch, length, threads, runs)
        rows.append(base.to_dict() | {"speedup": 1.0, "size_ratio": 1.0})
        for lat in others:
            rows.append(lat.to_dict() | {"speedup": base.median_ms / lat.median_ms,
                                         "size_ratio": base.size_mb / lat.size_mb})
    return rows
