"""Do the per-method defaults of ``embedx finetune`` learn on the offline path? Each method, with no
``--optimizer``/``--lr``/``--batch-size`` given, fine-tunes the random-init ``embedx-tiny`` on digits:train for
2 epochs; recorded per method: the default recipe, hold-out loss and accuracy before the first step and after
each epoch, whether the run is flat (``embedx.finetune.train.flat``), and zero-shot top-1 on digits:test before
and after (bench/results/finetune_defaults.{json,md}). ``--optimizer sgd`` (with each method's default lr)
shows the papers' optimizer on the same path.

    python bench/bench_finetune_defaults.py [--epochs 2] [--optimizer sgd] [--methods lora,bitfit]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import save  # noqa: E402

WORK = os.path.join(HERE, "_work", "finetune_defaults")


def main(argv=None) -> dict:
    import embedx.models.encoder  # noqa: F401  (torchvision shim first)
    from embedx.api import measure
    from embedx.embedding.serial import embed_to_store
    from embedx.finetune.train import finetune, flat
    from embedx.models.methods import METHODS, recipe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--optimizer", default=None, choices=["sgd", "adam"])
    ap.add_argument("--methods", default=",".join(METHODS))
    a = ap.parse_args(argv)

    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    before = os.path.join(WORK, "before.zarr")
    embed_to_store(before, "digits:test", "embedx-tiny", "none")
    top1 = lambda s: measure(s, ["zeroshot_top1"], device="cpu")["zeroshot_top1"]  # noqa: E731
    test_before = top1(before)
    rows = {}
    for method in a.methods.split(","):
        run = os.path.join(WORK, f"run-{method}")
        t = time.perf_counter()
        cfg = finetune(run, "digits:train", "embedx-tiny", "none", method, epochs=a.epochs, optimizer=a.optimizer,
                       progress=False)
        secs = time.perf_counter() - t
        after = os.path.join(WORK, f"after-{method}.zarr")
        embed_to_store(after, "digits:test", None, None, checkpoint=run)
        rows[method] = {"optimizer": cfg["optimizer"], "lr": cfg["lr"], "batch_size": cfg["batch_size"],
                        "default": (cfg["optimizer"], cfg["lr"]) == recipe(method),
                        "val_loss_before": cfg["zeroshot_val_loss"], "val_acc_before": cfg["zeroshot_val_acc"],
                        "history": cfg["history"], "best_val_acc": cfg["best_val_acc"], "flat": flat(cfg),
                        "test_top1_before": test_before, "test_top1_after": top1(after), "seconds": secs}
        r = rows[method]
        print(f"{method}: {r['optimizer']} lr {r['lr']:g}: val loss {r['val_loss_before']:.4f} -> "
              f"{min(h['val_loss'] for h in r['history']):.4f}, val acc {r['val_acc_before']:.3f} -> "
              f"{r['best_val_acc']:.3f}, test top-1 {test_before:.3f} -> {r['test_top1_after']:.3f}, {secs:.0f} s",
              flush=True)
    md = ["| method | optimizer, lr | hold-out loss start -> epochs | hold-out acc start -> epochs | flat | "
          "test top-1 before -> after | train time |", "|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        md.append(f"| {m} | {r['optimizer']}, {r['lr']:g} | {r['val_loss_before']:.4f} -> "
                  + ", ".join(f"{h['val_loss']:.4f}" for h in r["history"])
                  + f" | {r['val_acc_before']:.3f} -> " + ", ".join(f"{h['val_acc']:.3f}" for h in r["history"])
                  + f" | {'yes' if r['flat'] else 'no'} | {r['test_top1_before']:.3f} -> "
                  f"**{r['test_top1_after']:.3f}** | {r['seconds']:.0f} s |")
    opt = "each method's default optimizer" if a.optimizer is None else f"--optimizer {a.optimizer}"
    md.append(f"\n`embedx-tiny`, random init (seed 0), `embedx finetune --method M --epochs {a.epochs} --data "
              f"digits:train` with {opt} and default lr, batch size and weight decay; hold-out: 10% of digits:train (144 images); test: "
              f"zero-shot top-1 on digits:test (360 images) of the stores embedded before and after.")
    res = {"model": "embedx-tiny", "epochs": a.epochs, "optimizer": a.optimizer, "methods": rows}
    save("finetune_defaults" if a.optimizer is None else f"finetune_defaults_{a.optimizer}", res, "\n".join(md))
    return res


if __name__ == "__main__":
    main()
