"""ONNX Runtime (CPU execution provider) as a deployment runtime.

Sessions do not spin (``allow_spinning=0``): timed in turn with other sessions, an idle session's busy-waiting
threads would slow the next one's run (measured in `unicompress.bench.measure_latencies`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..onnx.runtime import make_session


def version() -> str:
    """The installed onnxruntime version."""
    import onnxruntime

    return onnxruntime.__version__


class OrtModel:
    """An ONNX file in an ORT CPU session with a fixed thread count."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int):
        import onnxruntime

        self.session = make_session(path, threads, spinning=False)
        self.run_options = onnxruntime.RunOptions()
        self.run_options.log_severity_level = 4  # a failed run is raised (and reported); ORT's log line is noise
        self.detail = f"CPU execution provider, {threads} intra-op thread(s), no spinning"

    def get_inputs(self) -> Sequence:
        return self.session.get_inputs()

    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(None, dict(feeds), self.run_options)]


def load(path: Path, threads: int = 2) -> OrtModel:
    """An ORT session of `path` (``.onnx``)."""
    return OrtModel(path, threads)
