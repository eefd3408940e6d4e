"""What the sharded sources (``wds:``, ``parquet:``) share: patterns of many files (brace ranges, globs, local paths
or fsspec URLs), a class-names file, a source that records its format, and reads of byte ranges.

  * **Patterns.** ``shards/{00000..00099}.tar`` (zero-padded ranges), ``{a,b}`` lists, ``*`` globs, a folder (its
    files with the format's extension, sorted) and ``A::B`` (several patterns, in order).
  * **Classes file** (``--classes``): one class name a line, UTF-8; line k (from 0) names label k.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from embedx.fs.files import SMALL_CAP, NotAFile, file_problem, isdir, isfile, open_binary, read_capped
from embedx.fs.locations import location
from embedx.errors import EmbedxError
from embedx.sources.base import Source

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
MAX_FILES = 10_000_000


def expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b`` -> a00b a01b a02b; ``{x,y}`` -> x y; several braces multiply, left to right. The count is
    known before anything is expanded: past ``MAX_FILES`` names in all, a one-line error."""
    braces = [_brace(m.group(1), pattern) for m in re.finditer(r"\{([^{}]*)\}", pattern)]
    total = 1
    for n, _ in braces:
        total *= n
        if total > MAX_FILES:
            raise EmbedxError(f"{pattern!r} names more than {MAX_FILES:,} files (its braces multiply)")
    return _expand(pattern)


def _brace(body: str, pattern: str):
    """(how many items, a function making them) of the brace ``{body}``."""
    r = _RANGE.match(body)
    if r:
        a, b = int(r.group(1)), int(r.group(2))
        width = max(len(r.group(1)), len(r.group(2))) if r.group(1).startswith("0") or r.group(2).startswith("0") \
            else 0
        if b < a:
            raise EmbedxError(f"brace range {{{body}}} in {pattern!r} runs backwards")
        if b - a >= MAX_FILES:
            raise EmbedxError(f"brace range {{{body}}} in {pattern!r} names more than {MAX_FILES:,} files")
        return b - a + 1, lambda: [str(k).zfill(width) for k in range(a, b + 1)]
    if "," in body:
        return body.count(",") + 1, lambda: body.split(",")
    raise EmbedxError(f"brace {{{body}}} in {pattern!r}: use a range like {{00000..00099}} or a list {{a,b}}")


def _expand(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, tail = pattern[:m.start()], pattern[m.end():]
    rests = _expand(tail)
    return [head + it + rest for it in _brace(m.group(1), pattern)[1]() for rest in rests]


def expand_files(pattern: str, ext: str, what: str) -> list[str]:
    """The files a pattern names, in order; a missing one is a one-line error (a typo, not data to skip)."""
    out: list[str] = []
    for part in pattern.split("::"):
        part = location(part).expanduser().path
        for p in expand_braces(part):
            if any(c in p for c in "*?["):
                found = location(p).glob()  # sorted; local: regular files only
                if not found:
                    raise EmbedxError(f"no {what} matches {p}")
                out.extend(found)
            elif isdir(p):
                found = sorted(f for f in location(p).files() if f.lower().endswith(ext))
                if not found:
                    raise EmbedxError(f"{p} is a folder without {ext} files")
                out.extend(found)
            else:
                out.append(p)
            if len(out) > MAX_FILES:
                raise EmbedxError(f"{pattern!r} names more than {MAX_FILES:,} files")
    missing = [p for p in out if not isfile(p)]
    if missing:
        why = file_problem(missing[0])  # a FIFO, a device, a folder: named, never opened
        if why and why != "no such file":
            raise EmbedxError(f"{what} {missing[0]} is {why}" if why.endswith("not a regular file") else
                              f"{what} {missing[0]}: {why}")
        raise EmbedxError(f"{what} not found: {missing[0]}" + (f" ({len(missing)} of {len(out)} missing)"
                                                                if len(missing) > 1 else ""))
    return out


def names_files(pattern: str, ext: str) -> bool:
    """Whether ``pattern`` reads as files with the extension ``ext`` (the ``can_open`` of ``wds:`` and ``parquet:``):
    every ``::`` part ends with ``ext`` (a file, a brace pattern or a glob; a local path or a URL) or is a local folder
    holding such a file. Nothing is listed behind a URL."""
    for part in pattern.split("::") if pattern else ():
        if part.lower().endswith(ext):
            continue
        loc = location(os.path.expanduser(part))
        if not (loc.local and os.path.isdir(loc.path) and any(e.name.lower().endswith(ext) and e.is_file()
                                                              for e in os.scandir(loc.path))):
            return False
    return bool(pattern)


def read_classes(path: str) -> list[str]:
    """``--classes FILE``: one class name a line (UTF-8); line k names label k. Blank or repeated names are errors."""
    try:
        raw = read_capped(location(path).expanduser().path, SMALL_CAP, "a classes file")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise EmbedxError(f"classes file not found: {path}") from None
    except NotAFile as e:
        if e.kind == "a folder":
            raise EmbedxError(f"classes file {path} is a folder (expected one class name a line)") from None
        raise EmbedxError(e.about(f"classes file {path}")) from None
    except UnicodeDecodeError:
        raise EmbedxError(f"classes file {path} is not UTF-8 text (expected one class name a line)") from None
    except OSError as e:
        raise EmbedxError(f"cannot read classes file {path} ({e.strerror or e})") from None
    names = [ln.strip() for ln in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise EmbedxError(f"classes file {path} is empty (expected one class name a line)")
    if "" in names:
        raise EmbedxError(f"classes file {path}: line {names.index('') + 1} is blank (one class name a line)")
    seen: dict[str, int] = {}
    for k, n in enumerate(names):
        if n in seen:
            raise EmbedxError(f"classes file {path}: {n!r} is on lines {seen[n] + 1} and {k + 1} (names must differ)")
        seen[n] = k
    if len(names) < 2:
        raise EmbedxError(f"classes file {path} names one class; a class store needs at least 2")
    return names


def label_index(value, classnames: list[str], where: str, classes_path: str) -> int:
    """A label (an int index, a digit string or a class name) -> its index in ``classnames``; else a one-line error."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, str):
        v = value.strip()
        if v in classnames:
            return classnames.index(v)
        try:
            value = int(v)
        except ValueError:
            raise EmbedxError(f"{where}: label {value[:60]!r} is not a class in {classes_path} nor an index") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise EmbedxError(f"{where}: label {str(value)[:60]!r} is not an integer or a class name")
    if not 0 <= value < len(classnames):
        raise EmbedxError(f"{where}: label {value} is out of range for the {len(classnames)} classes of "
                          f"{classes_path} (labels index its lines from 0)")
    return value


def decode_image(data: bytes) -> Image.Image:
    """RGB image of encoded bytes; an undecodable one raises with a message that is the same in every process."""
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnidentifiedImageError(f"cannot identify image ({len(data)} bytes, starting {data[:8]!r})") from None
    with im:
        return im.convert("RGB")


class RangeReader:
    """``read(path, offset, size)``: bytes of a local file (open, seek, read) or of a URL (one ranged request); the
    file checked to be a regular one first (``embedx.fs.files``)."""

    def __init__(self):
        self._where: dict = {}  # path -> (Location, its local path or None)

    def read(self, path: str, offset: int, size: int) -> bytes:
        if size < 0 or offset < 0:
            raise OSError(f"bad byte range: {size} bytes at offset {offset}")
        if path not in self._where:
            loc = location(path)
            self._where[path] = loc, loc.local_path  # file:// URLs: read as local paths
        loc, local = self._where[path]
        if local is None:
            data = loc.read_range(offset, offset + size)
        else:
            with open_binary(local) as f:
                f.seek(offset)
                data = f.read(size)
        if len(data) != size:
            raise OSError(f"short read: {len(data)} of {size} bytes at offset {offset} (file truncated?)")
        return data

    def __getstate__(self):  # filesystems are re-made in each process
        return {"_where": {}}


@dataclass
class ShardedSource(Source):
    """A :class:`Source` that records its format and counts (``info``, stored as ``meta["source"]``) and whose
    fingerprint also covers its files' sizes (a rewritten shard with the same keys is another dataset)."""

    info: dict = field(default_factory=dict)
    file_sizes: list = field(default_factory=list)  # [(path, bytes)]
    caption_field: str = ""

    def fingerprint(self) -> str:
        h = hashlib.sha256(super().fingerprint().encode())
        h.update(json.dumps([[os.path.basename(p), s] for p, s in self.file_sizes]).encode())
        return h.hexdigest()
