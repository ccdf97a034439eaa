"""Capability rows of quantization and distillation (owned by the quantization/distillation helper).

Placeholder created by the pruning/low-rank helper so `capabilities.py` imports; the other helper fills it.
Each row: (technique, field, values, Support).
"""
from __future__ import annotations

QUANTIZATION_ROWS: list = []
DISTILLATION_ROWS: list = []
