"""``embedx info``: describe a store and check its chunks' content checksums (parse, call, render)."""
from __future__ import annotations

import sys

import click

from embedx.cli.common import EXIT_BAD_INPUT, echo, emit_json, exit_damaged, with_flags
from embedx.cli.options import json_option, store_argument, verbosity_options
from embedx.budget import human_bytes


def _rows(d: dict, res: dict | None) -> list[tuple[str, object]]:
    """The (label, value) lines of the text description."""
    state = "complete" if d["complete"] else f"UNFINISHED ({d['rows_committed']} rows committed; {d['to_finish']})"
    rows = [
        ("store", d["path"]), ("schema", d["schema"]), ("state", state),
        ("mode", d["mode"]), ("images", d["n_images"]), ("texts", d["n_texts"]), ("dim", d["dim"]),
        ("dtype", d["dtype"]), ("chunks", f"{d['chunk_rows']} rows, codec {d['codec']}"),
        ("size on disk", human_bytes(d["size_bytes"])), ("model", d["model"]),
        ("pretrained", d["pretrained"]), ("seed", d["seed"]), ("dataset", d["dataset"]),
        ("normalized", d["normalized"]), ("skipped inputs", d["n_skipped"]), ("created", d["created"]),
    ]
    src = d.get("source")
    if isinstance(src, dict) and src.get("format"):  # imports of dumps and wds:/parquet: embeds: format, counts
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in src.items() if k not in ("format", "path"))
        where = f" from {src['path']}" if src.get("path") else ""
        rows.insert(rows.index(("dataset", d["dataset"])) + 1, ("source", f"{src['format']}: {counts}{where}"))
    integrity = d["integrity"] or "no checksums recorded (unfinished or older store)"
    if res is not None:
        integrity += ": ok, checked now" if res["ok"] else f": {len(res['problems'])} DAMAGED (see below)"
    rows.append(("integrity", integrity))
    if d["checkpoint_sha256"]:
        rows.append(("checkpoint sha256", d["checkpoint_sha256"]))
    if d.get("checkpoint"):
        c = d["checkpoint"]
        fam = f", {c['family']}, {c.get('towers') or 'both'} towers" if c.get("family") else ""
        run = f"{c.get('path')} ({c.get('method')}{fam}, params sha256 {str(c.get('sha256'))[:12]}...)"
        rows.append(("fine-tuned run", run))
    return rows


@click.command()
@store_argument
@json_option("Machine-readable output.")
@click.option("--quick", is_flag=True, help="Skip the checksum check of every chunk (metadata and lengths only).")
@verbosity_options
def info(store, as_json, quick):
    """Describe a store: schema, model, counts, dims, dtype, chunking, size on disk, completeness, integrity.

    Unfinished stores are described too (complete: false), with the rows committed so far. A complete store's
    chunks are checked against their recorded content checksums and its embedding rows against what measures
    accept (finite, nonzero; --quick skips both): damage and such rows are listed and exit 2, as `embedx verify`
    (which also checks the files' crc32c).
    """
    from embedx.store.integrity import verify as check
    from embedx.store import Store

    d = Store(store, allow_partial=True).info()
    if d.get("to_finish"):  # the library's hint names Python parameters ("overwrite=True"): shown as flags
        d["to_finish"] = with_flags(d["to_finish"])[0]
    res = None
    if d["complete"] and d["integrity"] and not quick:
        res = check(store, files=False, content=True)
        d["integrity_check"] = {"ok": res["ok"], "problems": res["problems"]}
    if as_json:
        emit_json(d, None, True)
        if res is not None and not res["ok"]:
            sys.exit(EXIT_BAD_INPUT)
        return
    rows = _rows(d, res)
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        echo(f"{k:<{w}}  {v}")
    if res is not None and not res["ok"]:
        exit_damaged(store, res["problems"])
