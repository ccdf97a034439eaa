#!/usr/bin/env bash
# The README's main job: build the environment, fine-tune all-MiniLM-L6-v2 on BBC News once (cached),
# compress it with the headline recipe on the default backend (torch) and print the report.
# Usage: bash scripts/main_job.sh [RECIPE] [--backend NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=2 GLOG_minloglevel=2
recipe=${1:-examples/int8_static.yaml}
shift || true
.venv/bin/python examples/run_example.py "$recipe" "$@"
