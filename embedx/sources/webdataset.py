"""``wds:PATTERN``: WebDataset shards (tar files; local paths or fsspec URLs, e.g.
``wds:/data/shards/{00000..00099}.tar`` or ``wds:s3://bucket/laion/{000000..012345}.tar``).

Format (WebDataset's convention): a sample is a run of consecutive members sharing a key, the member name up to the
first dot of its file name (``dir/000123.jpg``, ``dir/000123.txt`` -> key ``dir/000123``, extensions ``jpg``,
``txt``). The image is the ``jpg``/``jpeg``/``png``/``webp`` member; a ``txt`` member is its caption (a paired
store), or, with ``classes`` (``--classes names.txt``), a ``cls`` member (an integer) or the ``label`` field of a
``json`` member (an index or a class name) is its label (a class store). ``caption_col``/``label_col`` name a field
of the ``json`` member instead.

**Index.** One pass over each shard's tar headers (seeking past the image bytes on a local disk; one sequential
read behind a URL), shards in parallel threads, reads only the small caption/label members and records each
sample's image member by (shard, offset, size). ``load(i)`` then reads that one member (a seek and a read, or one
ranged request) and decodes it, so the source has random access by position: resume (``source_pos``) and cluster
tasks work as for folders. Memory: a few small entries a sample; images are read one at a time.

**Skips.** A sample without an image, caption or label member, with two members of one extension, or cut off by
the end of a truncated shard is left out and listed (id ``SHARD/MEMBER``, with the reason); a shard whose tar
headers stop being valid (truncated, corrupt) keeps the samples before that point and is listed once
(id ``SHARD``). An image member that does not decode is skipped and listed by the embed. Ids are
``SHARD_FILE_NAME/IMAGE_MEMBER_NAME``; image ``i`` always pairs with caption/label ``i``.
"""
from __future__ import annotations

import json
import os
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedx.fs.files import IMAGE_CAP, SMALL_CAP, local_path, open_binary
from embedx.fs.files import size as file_size
from embedx.engine import kinds
from embedx.engine.kinds import Option
from embedx.errors import EmbedxError, one_line
from embedx.fs.locations import location
from embedx.sources.files import (RangeReader, ShardedSource, decode_image, expand_files, label_index, names_files,
                                  read_classes)
from embedx.fs.url import storage_faults

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_BASE_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext (no hidden-file keys)
SCAN_THREADS = 8
STREAM_BLOCK = 8 << 20


CLASSES = Option("classes", "a class store: a file of class names, one a line (line k names label k)")


@kinds.register("source", "wds", usage="wds:PATTERN", can_open=lambda p: names_files(p, ".tar"),
                summary="WebDataset tar shards (brace patterns, globs, a folder; local or fsspec URL): jpg/png/webp "
                        "with txt captions, or cls/json labels with `classes`",
                options=(CLASSES,
                         Option("caption_col", "a field of the json member", "the txt member"),
                         Option("label_col", "a field of the json member", "the cls member, else json 'label'")))
def wds_source(pattern: str, spec: str, *, classes: str | None = None, caption_col: str | None = None,
               label_col: str | None = None) -> ShardedSource:
    """The samples of the shards ``pattern`` names, in shard then member order (see the module docstring)."""
    with storage_faults(pattern):  # no credentials, an unreachable or silent endpoint: one line naming the shards
        shards = expand_files(pattern, ".tar", "shard")
        classnames = read_classes(classes) if classes else None
        want = _Want(classnames, classes, caption_col, label_col)
        with ThreadPoolExecutor(min(SCAN_THREADS, len(shards))) as pool:
            scans = list(pool.map(lambda s: _scan_shard(s, want), shards))

    ids, captions, labels, excluded = [], [], [], []
    shard_of, offsets, sizes = [], [], []
    seen_exts: set = set()
    for k, scan in enumerate(scans):
        seen_exts |= scan["exts"]
        excluded += scan["excluded"]
        for s in scan["samples"]:
            ids.append(s["id"])
            shard_of.append(k)
            offsets.append(s["offset"])
            sizes.append(s["size"])
            (captions if classnames is None else labels).append(s["target"])
    n_samples = len(ids) + sum(1 for e in excluded if not e.get("shard"))
    if not ids:
        if classnames is None and not seen_exts & {"txt"} and seen_exts & {"cls", "json"}:
            raise EmbedxError(f"{pattern}: the samples have labels ({', '.join(sorted(seen_exts & {'cls', 'json'}))}"
                              f") but no captions (txt): pass classes=NAMES.txt for a class store", param="classes")
        why = f"; first problem: {excluded[0]['id']}: {excluded[0]['error']}" if excluded else ""
        raise EmbedxError(f"{pattern}: no usable samples in {len(shards)} shard(s) (an image member "
                          f"({'/'.join(IMAGE_EXTS)}) and a {want.describe()} per sample){why}")
    reader = RangeReader()
    shard_of = np.asarray(shard_of, np.int32)
    offsets, sizes = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)

    def load(i: int):
        n = int(sizes[i])
        if n > IMAGE_CAP:  # an unreadable image, counted as one: never read
            raise OSError(f"image member of {n:,} bytes is above the {IMAGE_CAP >> 20} MiB cap")
        return decode_image(reader.read(shards[shard_of[i]], int(offsets[i]), n))

    info = {"format": "wds", "shards": len(shards), "samples": n_samples, "usable": len(ids),
            "left_out": len(excluded), "truncated_shards": sum(1 for e in excluded if e.get("shard"))}
    excluded = [{"id": e["id"], "error": e["error"]} for e in excluded]
    common = dict(info=info, file_sizes=[(s, sc["size"]) for s, sc in zip(shards, scans)], excluded=excluded,
                  caption_field=want.describe())
    if classnames is None:
        return ShardedSource(spec, ids, load, captions=captions, **common)
    return ShardedSource(spec, ids, load, classnames=classnames, labels=np.asarray(labels, np.int32), **common)


class _Want:
    """Which members a sample needs and how its caption or label is read from them."""

    def __init__(self, classnames, classes_path, caption_col, label_col):
        self.classnames, self.classes_path = classnames, classes_path
        self.caption_col, self.label_col = caption_col, label_col
        if classnames is None and label_col:
            raise EmbedxError("label_col needs classes=NAMES.txt (the class names, one a line)",
                              param=("label_col", "classes"))
        if classnames is not None and caption_col:
            raise EmbedxError("caption_col makes a paired store and classes a class store: drop one",
                              param=("caption_col", "classes"))

    @property
    def small(self) -> tuple[str, ...]:
        """The extensions whose bytes the scan reads."""
        if self.classnames is None:
            return ("json",) if self.caption_col else ("txt",)
        return ("json",) if self.label_col else ("cls", "json")

    def describe(self) -> str:
        if self.classnames is None:
            return f"json field {self.caption_col!r}" if self.caption_col else "txt caption"
        return f"json field {self.label_col!r}" if self.label_col else "cls label (or json field 'label')"

    def target(self, members: dict, where: str):
        """The sample's caption (str) or label (int); (None, reason) when it has none."""
        if self.classnames is None:
            if self.caption_col:
                value, why = _json_field(members, self.caption_col)
                if why:
                    return None, why
                return (value, None) if isinstance(value, str) else (None, f"json field {self.caption_col!r} is "
                                                                           f"not a string")
            if "txt" not in members:
                return None, "no caption member (txt)"
            try:
                return members["txt"].decode("utf-8"), None
            except UnicodeDecodeError:
                return None, "caption (txt) is not UTF-8"
        if "cls" in members and not self.label_col:
            try:
                value = members["cls"].decode("utf-8").strip()
            except UnicodeDecodeError:
                return None, "label (cls) is not UTF-8"
        else:
            value, why = _json_field(members, self.label_col or "label")
            if why:
                return None, why if self.label_col else "no label member (cls, or json with a 'label' field)"
        return label_index(value, self.classnames, where, self.classes_path), None


def _json_field(members: dict, name: str):
    if "json" not in members:
        return None, "no json member"
    try:
        doc = json.loads(members["json"].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "json member is not valid UTF-8 JSON"
    if not isinstance(doc, dict) or doc.get(name) is None:
        return None, f"json has no field {name!r}"
    return doc[name], None


def _scan_shard(shard: str, want: _Want) -> dict:
    """One pass over a shard's headers -> {"samples": [{id, offset, size, target}], "excluded", "exts", "size"}."""
    name = os.path.basename(shard.rstrip("/"))
    size = file_size(shard)
    samples, excluded, exts = [], [], set()
    cur: dict = {}

    def flush():
        if not cur:
            return
        key = cur.pop("__key__")
        bad = cur.pop("__bad__", None)
        imgs = [e for e in IMAGE_EXTS if e in cur]
        sid = f"{name}/{cur[imgs[0]][2]}" if imgs else f"{name}/{key}"
        if bad:
            excluded.append({"id": sid, "error": bad})
        elif not imgs:
            excluded.append({"id": sid, "error": f"no image member ({', '.join(IMAGE_EXTS)})"})
        else:
            off, n, _ = cur[imgs[0]]
            target, why = want.target({k: v for k, v in cur.items() if isinstance(v, bytes)}, f"{shard}: {sid}")
            if why:
                excluded.append({"id": sid, "error": why})
            else:
                samples.append({"id": sid, "offset": off, "size": n, "target": target})
        cur.clear()

    local = local_path(shard)
    if local is not None:  # a path or a file:// URL: checked to be a regular file, reads clamped to its size
        f = _Clamped(open_binary(local), size)
    else:
        f = location(shard).open("rb", block_size=STREAM_BLOCK, cache_type="readahead")
    stopped = None
    end = 0
    try:
        packed = _compressed(f.read(6))
        f.seek(0)
        if packed:
            return _unreadable(shard, name, size, f"{packed}-compressed tar is not supported; decompress it "
                                                  f"and point wds: at the .tar")
        why = _bad_header(f, 0, size) if local is not None else None
        if why:
            return _unreadable(shard, name, size, f"not a readable tar file ({why} at byte 0)")
        try:
            tf = tarfile.open(fileobj=f, mode="r:" if local is not None else "r|")
        except _TAR_ERRORS as e:
            return _unreadable(shard, name, size, f"not a readable tar file ({_short(e)})")
        last = -1
        try:
            while True:
                # offsets strictly increase and sizes are >= 0, or tarfile (CVE-2025-8194) seeks back to a header
                # it has read and loops forever: the shard stops there, as a corrupt one
                if local is not None and tf.offset > last and tf.offset < size:
                    why = _bad_header(f, tf.offset, size)
                    if why:
                        stopped = f"{why} at byte {tf.offset}"
                        break
                m = tf.next()
                if m is None:
                    break
                if m.offset <= last or m.size < 0 or m.offset_data < m.offset or m.offset_data > size:
                    stopped = f"invalid tar header at byte {m.offset} (size {m.size}, offsets not advancing)"
                    break
                last = m.offset
                end = m.offset_data + (-(-m.size // 512) * 512)
                if not m.isreg():
                    continue
                mm = _BASE_EXT.match(m.name)
                base = os.path.basename(m.name)
                if not mm or (base.startswith("__") and base.endswith("__")):
                    continue
                key, ext = mm.group(1), mm.group(2).lower()
                if cur and cur["__key__"] != key:
                    flush()
                cur.setdefault("__key__", key)
                exts.add(ext)
                if m.offset_data + m.size > size:
                    if ext in IMAGE_EXTS:
                        cur.setdefault(ext, (m.offset_data, m.size, m.name))
                    cur["__bad__"] = f"member {m.name} is cut off by the end of the shard (truncated tar)"
                    stopped = stopped or f"truncated tar: member {m.name} runs past the end of the file"
                    break
                if ext in cur:
                    cur["__bad__"] = f"two members with extension {ext!r} (duplicate key {key!r})"
                elif ext in IMAGE_EXTS:
                    cur[ext] = (m.offset_data, m.size, m.name)
                elif ext in want.small:
                    if m.size > SMALL_CAP:
                        cur["__bad__"] = f"member {m.name} of {m.size:,} bytes is above the {SMALL_CAP >> 20} MiB cap"
                    else:
                        cur[ext] = tf.extractfile(m).read()
        except _TAR_ERRORS as e:
            stopped = f"tar headers stop being valid after byte {end} ({_short(e)})"
        if stopped is None and end < size:  # tarfile stops silently at a bad or cut header: check what follows
            tail = RangeReader().read(shard, end, min(1024, size - end))
            if tail.strip(b"\0"):
                stopped = f"invalid tar header at byte {end} (truncated or corrupt shard)"
        flush()
    finally:
        f.close()
    if stopped:
        excluded.append({"id": name, "error": f"{stopped}: samples after it are not read", "shard": True})
    return {"samples": samples, "excluded": excluded, "exts": exts, "size": size}


class _Clamped:
    """A local shard's file object whose reads never ask for more than what is left of the file: a header's
    claimed size never becomes an allocation."""

    def __init__(self, f, size: int):
        self.f, self.size = f, size
        self.name, self.mode = getattr(f, "name", None), "rb"

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.f.tell())
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def seek(self, *args) -> int:
        return self.f.seek(*args)

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()


# what tarfile raises on a hostile header: its own errors, I/O, and a chain of long-name headers too deep to follow
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, RecursionError)
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
EXTENDED_HEADER_CAP = 1 << 20  # a pax or GNU long-name header above it is corrupt (real ones: under a KiB)


def _compressed(head: bytes) -> str | None:
    return next((what for magic, what in _MAGIC if head.startswith(magic)), None)


def _bad_header(f, pos: int, size: int) -> str | None:
    """Why the tar header at byte ``pos`` of a local shard must not reach tarfile (a negative size, which Python
    3.11's tarfile follows backwards forever; an extended header larger than ``EXTENDED_HEADER_CAP``), else None
    (tarfile judges the rest). ``f``'s position is kept."""
    here = f.tell()
    try:
        f.seek(pos)
        block = f.read(512)
    finally:
        f.seek(here)
    if len(block) < 512 or not block.strip(b"\0"):
        return None
    field, kind = block[124:136], block[156:157]
    if field[0] & 0x80:  # base-256 (GNU): 0x80 positive, 0xff negative
        if field[0] == 0xFF:
            return "invalid tar header (negative member size)"
        n = int.from_bytes(field[1:], "big")
    else:
        try:
            n = int(field.split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            return None
    if kind in (b"x", b"g", b"L", b"K") and n > EXTENDED_HEADER_CAP:
        return f"invalid tar header (an extended header of {n:,} bytes)"
    return None


def _unreadable(shard, name, size, why) -> dict:
    return {"samples": [], "excluded": [{"id": name, "error": why, "shard": True}], "exts": set(), "size": size}


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {one_line(e, 120)}"
