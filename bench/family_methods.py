"""Every open_clip family x every fine-tuning method: what each method trains, per tower, counted on one full-size
model of each family (random weights, offline), with the time of the dry run that counts it.

    .venv/bin/python bench/family_methods.py            # about 3 minutes on a 2-core CPU; writes
                                                        # bench/results/family_methods.{json,md}

The counts are what ``embedx finetune -m MODEL --method M --dry-run`` prints (``--rank 4 --reduction 4``, every
block); docs/DESIGN.md's family table is this file's table. ``refused``: the method finds nothing in a tower (the
dry run's one-line error); with ``--towers text`` it runs on the text tower alone, counted in the next column.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = ["ViT-B-32", "coca_ViT-B-32", "ViT-B-16-SigLIP", "EVA02-B-16", "convnext_base", "RN50", "MobileCLIP-S1"]
METHODS = ["full", "bitfit", "attention", "lora", "adapter"]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main() -> None:
    from embedx.errors import EmbedxError
    from embedx.finetune import dry_run

    rows = []
    for model in MODELS:
        for method in METHODS:
            t0 = time.perf_counter()
            try:
                r = dry_run(model, "none", method)
                row = {"model": model, "method": method, **r}
            except EmbedxError as e:
                text = dry_run(model, "none", method, towers="text")
                row = {"model": model, "method": method, "refused": str(e), "family": text["family"],
                       "text_only": text["trainable_params"], "what": text["what"]}
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            print(f"{model:16} {method:9} {row.get('trainable_params', 'refused')!s:>12} {row['seconds']:6.2f}s",
                  flush=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
            "command": "bench/family_methods.py", "options": {"rank": 4, "reduction": 4, "train_blocks": None}}
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "family_methods.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(OUT, "family_methods.md"), "w") as f:
        f.write(table(rows, meta))


def table(rows: list[dict], meta: dict) -> str:
    by = {(r["model"], r["method"]): r for r in rows}
    out = ["# Fine-tuning methods on every open_clip family", "",
           f"Trainable parameters of `embedx finetune -m MODEL --method M --dry-run` (random weights, rank 4, "
           f"reduction 4, every block; {meta['machine']}). *refused*: the image tower has no attention; the number "
           "is `--towers text`.", "",
           "| model | family | total | " + " | ".join(METHODS) + " |", "|---|---|---:|" + "---:|" * len(METHODS)]
    for model in MODELS:
        full = by[(model, "full")]
        cells = []
        for m in METHODS:
            r = by[(model, m)]
            cells.append(f"{r['trainable_params']:,}" if "trainable_params" in r else f"refused ({r['text_only']:,})")
        out.append(f"| `{model}` | {full['family']} | {full['total_params']:,} | " + " | ".join(cells) + " |")
    out += ["", "What each method trains, per tower (the dry run's `what`):", ""]
    for model in MODELS:
        out.append(f"- `{model}`:")
        for m in METHODS[1:4]:
            r = by[(model, m)]
            what = "; ".join(f"{t}: {w}" for t, w in r["what"].items())
            out.append(f"  - {m}: {what}" + (" (image tower refused)" if "refused" in r else ""))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
