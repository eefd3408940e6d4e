"""``embedx verify``: check every chunk of a store (parse, call, render)."""
from __future__ import annotations

import click

from embedx.cli.common import echo, emit_json, exit_damaged
from embedx.cli.options import json_option, store_argument, verbosity_options


@click.command()
@store_argument
@json_option("Machine-readable output.")
@verbosity_options
def verify(store, as_json):
    """Check a whole store: array lengths against its commit marker, every chunk file of the committed rows
    present, every chunk file's crc32c and every chunk's decoded rows (NH2 hash) against the inventory recorded
    when it was finalized, and every embedding row against what measures accept (finite, nonzero).

    Prints each damaged array/chunk and exits 2 when anything is wrong; exit 0 and "ok" otherwise.
    """
    from embedx.store.integrity import verify as check

    res = check(store)
    if as_json:
        emit_json(dict(res, path=store), None, True)
    else:
        inv = "" if res["inventory"] else " (no checksums recorded: lengths and chunk files only)"
        if res["ok"]:
            echo(f"ok: {store}: {res['chunks_checked']} chunk files checked{inv}")
    if not res["ok"]:
        exit_damaged(store, res["problems"], listed=not as_json)
