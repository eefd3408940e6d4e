"""Captions and class names as embedx takes them in: at most :data:`MAX_TEXT_CHARS` characters each.

The text tower reads 77 tokens (a few hundred characters of ordinary text), so a longer caption or class name is
cut to its first ``MAX_TEXT_CHARS`` characters where it enters (data sources for ``embed``, ``import --names``,
the caption columns of imported dumps): what is tokenized and what ``texts/names`` stores is bounded whatever the
input holds (one 20 MB caption cost 11 GB when written as a fixed-width string array). How many were cut is
recorded in the store's metadata (``texts_truncated``) and said in one warning line.
"""
from __future__ import annotations

import logging

MAX_TEXT_CHARS = 1000

log = logging.getLogger("embedx")


def cap_texts(texts) -> tuple[list[str], int]:
    """(the strings, each cut to its first MAX_TEXT_CHARS characters; how many were cut)."""
    out, cut = [], 0
    for s in texts:
        if len(s) > MAX_TEXT_CHARS:
            s, cut = s[:MAX_TEXT_CHARS], cut + 1
        out.append(s)
    return out, cut


def cap_arrow(arr):
    """:func:`cap_texts` of a pyarrow string array: (the array, how many were cut)."""
    import pyarrow.compute as pc

    cut = int(pc.sum(pc.greater(pc.utf8_length(arr), MAX_TEXT_CHARS)).as_py() or 0)
    return (pc.utf8_slice_codeunits(arr, 0, MAX_TEXT_CHARS) if cut else arr), cut


def read_line(f) -> tuple[str, bool] | None:
    """The next line of text file ``f`` without its newline, cut to MAX_TEXT_CHARS characters (the rest is read
    in pieces and dropped, so a line of any length costs no more memory): (line, was cut), None at the end."""
    line = f.readline(MAX_TEXT_CHARS + 1)
    if not line:
        return None
    if line.endswith("\n") or len(line) <= MAX_TEXT_CHARS:
        return line.rstrip("\n"), False
    rest = line[MAX_TEXT_CHARS:]
    while rest and not rest.endswith("\n"):
        rest = f.readline(1 << 20)
    return line[:MAX_TEXT_CHARS], True


def note(meta: dict, cut: int, what: str = "captions or class names") -> dict:
    """Record ``cut`` texts cut to MAX_TEXT_CHARS in ``meta`` (``texts_truncated``) and say so in one warning line;
    ``meta`` unchanged when none was."""
    if cut:
        meta["texts_truncated"] = {"count": int(cut), "max_chars": MAX_TEXT_CHARS}
        log.warning("%d %s longer than %d characters were cut to their first %d (the model reads 77 tokens); "
                    "recorded in the store's metadata as texts_truncated", cut, what, MAX_TEXT_CHARS,
                    MAX_TEXT_CHARS)
    return meta
