"""The plugin end to end, the way a third-party adapter runs it: one pytest command against the templates
shipped inside the core, writing the Markdown + JSON report."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from unicompress.backend import available_backends


@pytest.mark.slow
def test_third_party_command_runs_the_templates_and_writes_the_report(tmp_path):
    if "torch" not in available_backends():
        pytest.skip("needs the torch adapter installed")
    report = tmp_path / "report"
    xfail = tmp_path / "xfail.yaml"
    xfail.write_text('"torch/pruning/nm-2-4/onnx": "demonstrates the xfail file"\n')
    cmd = [sys.executable, "-m", "pytest", "-p", "unicompress.conformance.plugin", "--pyargs",
           "unicompress.conformance.templates", "--backend", "torch", "-k", "nm-2-4 or refuses or n_m",
           "--conformance-report", str(report), "--conformance-xfail", str(xfail), "--no-cross-backend",
           "-p", "no:cacheprovider", "-q", "-W", "ignore"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "unicompress conformance" in proc.stdout and "xpassed" in proc.stdout
    data = json.loads((report / "conformance.json").read_text())
    torch = data["backends"]["torch"]
    checks = torch["cases"]["pruning/nm-2-4"]["checks"]
    assert checks["pattern"]["passed"] is True and checks["sparsity"]["numbers"]["overall_sparsity"] == 0.5
    assert torch["rows"]["pruning.granularity=n_m"]["status"] == "pass"
    assert torch["contract"]["refuses_unclaimed"]["passed"] is True
    assert data["tests"]["torch/pruning/nm-2-4/onnx"] == "xpassed"
    md = (report / "conformance.md").read_text()
    assert "| `pruning.granularity=n_m` | pass |" in md
