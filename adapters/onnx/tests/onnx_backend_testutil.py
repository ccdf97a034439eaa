"""Shared helpers of the onnx backend tests (a plain module, not a conftest: names stay unique).

`bert_logits` / `vit_logits` are the zoo models' numpy forwards (`unicompress.zoo.reference`), so the graphs
are checked without torch.
"""
from __future__ import annotations

import logging

from unicompress import zoo
from unicompress.backend.registry import get_backend
from unicompress.zoo.reference import bert_logits, vit_logits  # noqa: F401  (re-exported for the tests)

logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization warns about pre-processing on the root logger


def adapter():
    return get_backend("onnx")


def tiny(name: str = "tiny-bert", seed: int = 0, batch: int = 4):
    """(model, config, example inputs) of a zoo model built by the onnx backend."""
    cfg = zoo.config_for(name)
    return adapter().build_model(name, seed=seed), cfg, zoo.inputs_for(name, cfg, batch=batch)


#: the encoder Linears the default selector chooses in tiny-bert (not embeddings, pooler or classifier)
def encoder_linears(cfg) -> list[str]:
    return [n for n, role, _ in zoo.bert.linear_names(cfg) if role not in ("pooler", "classifier")]
