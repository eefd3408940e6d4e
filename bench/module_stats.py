"""Module count and largest modules of a checkout's package (embedx/, plus kernels/ and cli/, installed as
embedx.kernels and embedx.cli), before vs after, as a small table.

    .venv/bin/python bench/module_stats.py --before /tmp/wt-before --after .
    .venv/bin/python bench/module_stats.py --after . --json          # one checkout, as JSON

A module is a .py file; lines are physical lines (``wc -l``). "Top level" counts embedx/*.py (the flat level the
redesign thins out), "packages" the folders with an __init__.py.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess

ROOTS = ("embedx", "kernels", "cli")


def stats(checkout: str, top: int = 5) -> dict:
    checkout = os.path.abspath(checkout)
    mods, packages = [], 0
    for root in ROOTS:
        base = os.path.join(checkout, root)
        for dirpath, dirnames, files in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            if "__init__.py" in files:
                packages += 1
            for f in sorted(files):
                if f.endswith(".py"):
                    p = os.path.join(dirpath, f)
                    with open(p, encoding="utf-8", errors="replace") as fh:
                        n = sum(1 for _ in fh)
                    mods.append((os.path.relpath(p, checkout), n))
    mods.sort(key=lambda m: -m[1])
    top_level = [m for m in mods if os.path.dirname(m[0]) == "embedx"]
    rev = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "?"
    return {"checkout": checkout, "rev": rev, "modules": len(mods),
            "modules_without_init": sum(1 for m in mods if not m[0].endswith("__init__.py")),
            "packages": packages, "embedx_top_level_modules": len(top_level),
            "embedx_top_level_without_init": sum(1 for m in top_level if not m[0].endswith("__init__.py")),
            "lines": sum(n for _, n in mods), "mean_lines": sum(n for _, n in mods) / max(len(mods), 1),
            "largest": [{"module": p, "lines": n} for p, n in mods[:top]]}


def table(before: dict | None, after: dict) -> str:
    sides = [("before", before), ("after", after)] if before else [("after", after)]
    head = "| | " + " | ".join(f"{n} ({s['rev']})" for n, s in sides) + " |"
    rows = [head, "|---" * (len(sides) + 1) + "|"]

    def row(label, f):
        rows.append(f"| {label} | " + " | ".join(f(s) for _, s in sides) + " |")

    row("modules (.py files)", lambda s: f"{s['modules']} ({s['modules_without_init']} without __init__)")
    row("packages", lambda s: str(s["packages"]))
    row("embedx/ top-level modules", lambda s: f"{s['embedx_top_level_modules']} "
                                               f"({s['embedx_top_level_without_init']} without __init__)")
    row("lines in all", lambda s: f"{s['lines']:,} (mean {s['mean_lines']:.0f} per module)")
    k = max(len(s["largest"]) for _, s in sides)
    for i in range(k):
        row("largest" if i == 0 else f"{i + 1}.", lambda s: (f"`{s['largest'][i]['module']}` {s['largest'][i]['lines']}"
                                                          if i < len(s["largest"]) else ""))
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="checkout before (optional)")
    ap.add_argument("--after", default=".")
    ap.add_argument("--top", type=int, default=5, help="how many largest modules")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    b = stats(a.before, a.top) if a.before else None
    s = stats(a.after, a.top)
    if a.json:
        print(json.dumps({"before": b, "after": s}, indent=1))
    else:
        print(table(b, s))


if __name__ == "__main__":
    main()
