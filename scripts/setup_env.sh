#!/usr/bin/env bash
# Create (or reuse) .venv and install unicompress with all three adapters, pinned by constraints.txt.
# Usage: bash scripts/setup_env.sh            (idempotent; ~2 minutes on a fresh machine)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip "setuptools<81" wheel
# torch==2.13.0 is pinned exactly (constraints.txt): a looser pin pulls a multi-GB CUDA build (STACK.md).
.venv/bin/python -m pip install -q -c constraints.txt \
  -e ".[dev,data,plot,deploy]" \
  -e adapters/torch -e adapters/tensorflow -e adapters/paddle \
  -e adapters/onnx
# Parquet files and Hugging Face datasets as data sources (unicompress.data); tests skip them when absent
.venv/bin/python -m pip install -q -c constraints.txt pyarrow==26.0.1 datasets==5.2.0
# Optuna for `unicompress search --strategy optuna` (unicompress.search.strategies); its tests skip it when absent
.venv/bin/python -m pip install -q -c constraints.txt optuna==5.1.0
.venv/bin/python -c "import unicompress, sys; print('unicompress', unicompress.__version__, 'in', sys.prefix)"
