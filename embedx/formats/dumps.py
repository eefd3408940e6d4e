"""``embedx import --from FORMAT DIR``: released embedding dumps streamed into one store.

Formats (layouts read from the writers' sources, see the commit that added this module):

* ``clip-retrieval`` (clip-retrieval ``inference``, the layout autofaiss indexes): ``img_emb/img_emb_{i}.npy``,
  ``text_emb/text_emb_{i}.npy``, ``metadata/metadata_{i}.parquet`` (columns ``image_path``, ``caption``, then the
  webdataset json fields such as ``url``, ``key``); ``i`` is zero-padded to ``int(log10(partitions)) + 1`` digits.
  The model is not recorded in the dump (``--model`` records it).
* ``datacomp`` (a DataComp / CommonPool metadata folder): ``{shard}.parquet`` (``uid``, ``url``, ``text``, ...)
  beside ``{shard}.npz`` (``b32_img``, ``b32_txt``, ``l14_img``, ``l14_txt``, ``dedup``: OpenAI CLIP ViT-B/32 and
  ViT-L/14 features); shards are hashes, taken in name order.
* ``npy`` and ``parquet``: what ``embedx export --format npy|parquet`` writes (``embedx.formats.export``).

Each format is a registered kind (``embedx.engine.kinds``: name, summary, options, opener = the scan below,
``can_open(DIR)``); :func:`scan` reads a dump through the registry and :func:`recognise` names the format of a folder
when ``--from`` is left out.

Every layout problem (a missing or extra partition, a ragged shard, row counts that disagree) is found from the
file headers before anything is read; rows are then checked as ``embedx import`` checks them, shard by shard, and
streamed in blocks into a staged store that replaces ``out`` only when complete: an error leaves nothing (or the
old store). Memory: one block of rows (an ``.npz`` member is decompressed whole: one shard).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import zipfile
from dataclasses import dataclass, field

import numpy as np

from embedx.fs import files as fsx
from embedx.fs.locations import FADVISE, PREADV, RENAME, location
from embedx import store as st
from embedx.engine import kinds
from embedx.engine.kinds import Option
from embedx.engine.progress import Bar, enabled
from embedx.errors import EmbedxError, one_line
from embedx.formats.arrays import BLOCK_ROWS
from embedx.rows import check_block
from embedx.store.placement import staged, writer_lock
from embedx.texts import cap_arrow, note
from embedx.fs.url import storage_faults

log = logging.getLogger("embedx")
DATACOMP_MODELS = {"l14": ("ViT-L-14", "openai"), "b32": ("ViT-B-32", "openai")}
ID_COLUMNS = {"clip-retrieval": ("image_path", "key", "url"), "datacomp": ("uid", "url", "key")}
CAPTION_COLUMNS = {"clip-retrieval": ("caption",), "datacomp": ("text", "caption")}
META_FILE = "embedx.json"  # written by embedx export: the store's mode, dtype, model, ...
NPZ_RATIO = 100  # an .npz member decompressing to more than this many times its stored bytes is refused


# -- array files read by header, then in row ranges ----------------------------------------------------------------
def _npy_header(f):
    """(shape, fortran_order, dtype) of the ``.npy`` stream ``f``, left at the first data byte."""
    major, _ = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f, max_header_size=1 << 20)
    if any(int(n) < 0 for n in shape) or any(int(n) == 0 for n in shape[1:]):
        raise ValueError(f"header shape {tuple(shape)} has a negative or zero row dimension")
    return shape, fortran, dtype


def _data_bytes(shape, dtype) -> int:
    """The bytes an array of ``shape`` and ``dtype`` holds, in Python integers (no int64 overflow)."""
    return math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize


class NpyRows:
    """A ``.npy`` file's shape and dtype from its header; rows read on demand with ``pread`` (no mmap: memory is
    the rows asked for)."""

    def __init__(self, path: str, label: str):
        self.path, self.label = path, label
        try:
            with fsx.open_binary(path) as f:
                shape, fortran, dtype = _npy_header(f)
                self.offset = f.tell()
        except fsx.NotAFile as e:
            raise EmbedxError(e.about(label)) from None
        except EmbedxError:  # a ValueError too: a storage fault or a cap, already one line
            raise
        except (ValueError, OSError) as e:
            raise EmbedxError(f"{label}: not a readable .npy file ({one_line(e, 160)})") from None
        if fortran and len(shape) > 1:
            raise EmbedxError(f"{label}: Fortran-ordered arrays are not supported; save it in C order")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        need = self.offset + _data_bytes(shape, self.dtype)
        have = fsx.size(path)
        if have < need:
            raise EmbedxError(f"{label}: truncated ({have} bytes, its header promises {need})")

    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows ``start:stop`` into ``out`` (C-contiguous, this file's dtype and row shape) by ``preadv``."""
        row = _data_bytes(self.shape[1:], self.dtype)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        if len(buf) != (stop - start) * row:
            raise ValueError(f"{self.label}: a buffer of {len(buf)} bytes for {stop - start} rows of {row}")
        if not location(self.path).can(PREADV):  # behind a URL: one ranged read
            with fsx.open_binary(self.path) as f:
                f.seek(self.offset + start * row)
                done = 0
                while done < len(buf):
                    n = f.readinto(buf[done:])
                    if not n:
                        raise EmbedxError(f"{self.label}: truncated while reading rows {start}..{stop - 1}")
                    done += n
            return out
        with fsx.open_binary(self.path, buffering=0) as f:
            pos, done = self.offset + start * row, 0
            while done < len(buf):
                n = os.preadv(f.fileno(), [buf[done:]], pos + done)
                if n <= 0:
                    raise EmbedxError(f"{self.label}: truncated while reading rows {start}..{stop - 1}")
                done += n
        return out

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.read_into(start, stop, np.empty((stop - start,) + self.shape[1:], self.dtype))


class NpzMember:
    """One array of an ``.npz``: shape and dtype from the member's header; the array decompressed once (a shard)."""

    def __init__(self, path: str, key: str, label: str):
        self.path, self.key, self.label = path, key, label
        self._data = None
        try:
            with fsx.open_binary(path) as raw, zipfile.ZipFile(raw) as z, z.open(key + ".npy") as f:
                shape, _, dtype = _npy_header(f)
                info, header = z.getinfo(key + ".npy"), f.tell()
        except fsx.NotAFile as e:
            raise EmbedxError(e.about(label)) from None
        except EmbedxError:  # a ValueError too: a storage fault or a cap, already one line
            raise
        except (ValueError, OSError, KeyError, zipfile.BadZipFile) as e:
            raise EmbedxError(f"{label}: cannot read {key!r} ({one_line(e, 160)})") from None
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        need = header + _data_bytes(shape, dtype)  # what np.load would allocate: the member must hold it
        if info.file_size < need:
            raise EmbedxError(f"{label}: truncated ({info.file_size} bytes, its header promises {need})")
        if info.file_size > NPZ_RATIO * info.compress_size + (1 << 20):
            raise EmbedxError(f"{label}: {info.file_size:,} bytes compressed into {info.compress_size:,} (over "
                              f"{NPZ_RATIO}:1; embeddings barely compress): refused, it would be decompressed whole")
        self._lock = threading.Lock()

    def read(self, start: int, stop: int) -> np.ndarray:
        with self._lock:  # decompressed once, whichever thread asks first
            if self._data is None:
                with fsx.open_binary(self.path) as raw, np.load(raw, allow_pickle=False) as z:
                    self._data = z[self.key]
            data = self._data
        return data[start:stop]

    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        out[...] = self.read(start, stop)
        return out

    def release(self) -> None:
        self._data = None


def npz_keys(path: str, label: str) -> list[str]:
    try:
        with fsx.open_binary(path) as raw, zipfile.ZipFile(raw) as z:
            return [n[:-4] for n in z.namelist() if n.endswith(".npy")]
    except fsx.NotAFile as e:
        raise EmbedxError(e.about(label)) from None
    except (OSError, zipfile.BadZipFile) as e:
        raise EmbedxError(f"{label}: not a readable .npz file ({one_line(e, 160)})") from None


@dataclass
class Shard:
    """One shard of a dump: image rows, text rows (same count) and a metadata table (same count, or None)."""

    name: str
    images: object
    texts: object
    table: str | None  # parquet file with the ids/captions (None: ids from ``ids``)
    rows: int
    labels: object = None
    extra: dict = field(default_factory=dict)


@dataclass
class Dump:
    kind: str
    path: str
    shards: list
    mode: str = "paired"
    id_column: str | None = None
    caption_column: str | None = None
    model: str | None = None
    pretrained: str | None = None
    meta: dict = field(default_factory=dict)  # an embedx export's embedx.json
    source: dict = field(default_factory=dict)
    class_names: list | None = None
    class_texts: object = None
    texts_truncated: int = 0  # captions cut to texts.MAX_TEXT_CHARS as the shards were read

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


# -- layouts ------------------------------------------------------------------------------------------------------
def _numbered(folder: str, prefix: str, ext: str, root: str) -> dict:
    """{partition number: path} of ``folder/{prefix}{digits}{ext}``; two files for one number is an error."""
    out = {}
    if not fsx.isdir(folder):
        return out
    pat = re.compile(rf"^{re.escape(prefix)}(\d+){re.escape(ext)}$")
    for name in fsx.listdir(folder):
        m = pat.match(name)
        if not m:
            continue
        k = int(m.group(1))
        if k in out:
            raise EmbedxError(f"{root}: two files for partition {k}: {fsx.basename(out[k])} and {name}")
        out[k] = fsx.join(folder, name)
    return out


def _ranges(ks) -> str:
    ks, out, i = sorted(ks), [], 0
    while i < len(ks):
        j = i
        while j + 1 < len(ks) and ks[j + 1] == ks[j] + 1:
            j += 1
        out.append(str(ks[i]) if i == j else f"{ks[i]}-{ks[j]}")
        i = j + 1
    return ", ".join(out)


def scan_clip_retrieval(path: str) -> Dump:
    """The partitions of a clip-retrieval inference output, checked from their headers."""
    rel = lambda p: fsx.rel(p, path)  # noqa: E731
    img = _numbered(fsx.join(path, "img_emb"), "img_emb_", ".npy", path)
    txt = _numbered(fsx.join(path, "text_emb"), "text_emb_", ".npy", path)
    meta = _numbered(fsx.join(path, "metadata"), "metadata_", ".parquet", path)
    if not img and not txt:
        raise EmbedxError(f"{path}: no clip-retrieval partitions (expected img_emb/img_emb_0.npy, "
                          f"text_emb/text_emb_0.npy and metadata/metadata_0.parquet)")
    for what, have in (("img_emb", img), ("text_emb", txt), ("metadata", meta)):
        if not have:
            raise EmbedxError(f"{path}: no {what}/ partitions; a paired store needs img_emb, text_emb and metadata")
    every = set(img) | set(txt) | set(meta)
    # a number with no file at all: clip-retrieval's writer writes nothing for a partition with no rows (an input
    # shard whose images all failed), and each partition's rows carry their ids: taken as empty, with a note
    empty = sorted(set(range(max(every) + 1)) - every)
    for what, have, ext in (("img_emb", img, "npy"), ("text_emb", txt, "npy"), ("metadata", meta, "parquet")):
        lack = sorted(every - set(have))
        if lack:
            raise EmbedxError(f"{path}: {what}/{what}_{lack[0]}.{ext} is missing (partition {lack[0]} has the "
                              f"other files)")
    shards = []
    for k in sorted(every):
        x, t = NpyRows(img[k], rel(img[k])), NpyRows(txt[k], rel(txt[k]))
        rows = _paired_rows(x, t, meta[k], rel(meta[k]))
        shards.append(Shard(rel(img[k]), x, t, meta[k], rows, extra={"partition": k}))
    _same_dim(shards)
    return Dump("clip-retrieval", path, shards,
                source={"partitions": len(shards), **({"empty_partitions": empty} if empty else {})})


def empty_note(source: dict) -> str | None:
    """The note for a clip-retrieval dump whose numbering skips partitions (None when it skips none)."""
    empty = source.get("empty_partitions")
    if not empty:
        return None
    return (f"partition{'s' if len(empty) > 1 else ''} {_ranges(empty)} of {source.get('path', 'the dump')} "
            f"{'have' if len(empty) > 1 else 'has'} no files: taken as empty (clip-retrieval writes no files for a "
            f"partition without rows)")


def scan_datacomp(path: str, features: str | None) -> Dump:
    """The shards of a DataComp metadata folder (``{shard}.parquet`` + ``{shard}.npz``), in name order."""
    root = path
    if not any(n.endswith((".npz", ".parquet")) for n in fsx.listdir(root)) and fsx.isdir(
            fsx.join(root, "metadata")):
        root = fsx.join(root, "metadata")  # the --data_dir of download_upstream.py
    names = fsx.listdir(root)
    npz = {n[:-4] for n in names if n.endswith(".npz")}
    pqs = {n[:-8] for n in names if n.endswith(".parquet")}
    if not npz and not pqs:
        raise EmbedxError(f"{path}: no DataComp shards (expected {{shard}}.npz beside {{shard}}.parquet)")
    for have, other, ext in ((npz, pqs, ".parquet"), (pqs, npz, ".npz")):
        lack = sorted(have - other)
        if lack:
            raise EmbedxError(f"{path}: {lack[0]}{ext} is missing ({len(lack)} shards lack their {ext}; "
                              f"each .npz needs the .parquet of the same name)")
    stems = sorted(npz)
    first = fsx.join(root, stems[0] + ".npz")
    keys = npz_keys(first, fsx.basename(first))
    if features is None:
        features = next((f for f in ("l14", "b32") if f"{f}_img" in keys and f"{f}_txt" in keys), None)
        if features is None:
            raise EmbedxError(f"{fsx.basename(first)} has no l14_img/l14_txt or b32_img/b32_txt arrays (has: "
                              f"{', '.join(keys)}); name the pair with features=NAME (NAME_img, NAME_txt)",
                              param="features")
    shards = []
    for s in stems:
        f = fsx.join(root, s + ".npz")
        label = fsx.rel(f, path)
        have = keys if f == first else npz_keys(f, label)
        for key in (f"{features}_img", f"{features}_txt"):
            if key not in have:
                raise EmbedxError(f"{label} has no array {key!r} (has: {', '.join(have)}); choose features "
                                  f"from the NAME_img/NAME_txt pairs present", param="features")
        x, t = NpzMember(f, f"{features}_img", label + ":" + features + "_img"), \
            NpzMember(f, f"{features}_txt", label + ":" + features + "_txt")
        table = fsx.join(root, s + ".parquet")
        rows = _paired_rows(x, t, table, fsx.rel(table, path))
        shards.append(Shard(label, x, t, table, rows))
    _same_dim(shards)
    model, pretrained = DATACOMP_MODELS.get(features, (None, None))
    return Dump("datacomp", path, shards, model=model, pretrained=pretrained,
                source={"shards": len(shards), "features": features})


def _export_meta(path: str) -> dict:
    """The ``embedx.json`` an ``embedx export`` left in ``path`` ({} if none)."""
    mf = fsx.join(path, META_FILE)
    if not fsx.exists(mf):
        return {}
    try:
        meta = json.loads(fsx.read_capped(mf, fsx.SMALL_CAP, f"an {META_FILE}").decode("utf-8"))
    except fsx.NotAFile as e:
        raise EmbedxError(str(e)) from None
    except EmbedxError:  # a ValueError too: a storage fault or a cap, already one line
        raise
    except (OSError, ValueError) as e:
        raise EmbedxError(f"{mf}: unreadable ({one_line(e, 160)})") from None
    return meta if isinstance(meta, dict) else {}


def scan_export(path: str, kind: str) -> Dump:
    """What ``embedx export --format npy|parquet`` wrote (``embedx.formats.export``)."""
    meta = _export_meta(path)
    mode = meta.get("mode", "paired")
    d = Dump(kind, path, [], mode=mode, model=meta.get("model"), pretrained=meta.get("pretrained"), meta=meta)
    if kind == "npy":
        x = NpyRows(_need(path, "images.npy"), "images.npy")
        t = NpyRows(_need(path, "texts.npy"), "texts.npy")
        ids = _need(path, "ids.parquet")
        if mode == "paired":
            rows = _paired_rows(x, t, ids, "ids.parquet")
            d.shards = [Shard("images.npy", x, t, ids, rows)]
        else:
            y = NpyRows(_need(path, "labels.npy"), "labels.npy")
            rows = _count_rows(x, "images.npy")
            _agree(rows, _count_rows(y, "labels.npy", 1), "images.npy", "labels.npy")
            _agree(rows, _table_rows(ids, "ids.parquet"), "images.npy", "ids.parquet")
            d.shards = [Shard("images.npy", x, None, ids, rows, labels=y)]
            d.class_texts = t
            d.class_names = _column(_need(path, "names.parquet"), "name", "names.parquet")
            _agree(_count_rows(t, "texts.npy"), len(d.class_names), "texts.npy", "names.parquet")
        _same_dim(d.shards, d.class_texts)
    else:
        table = _need(path, "embeddings.parquet")
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(fsx.parquet_source(table))
        rows = pf.metadata.num_rows
        d.shards = [Shard("embeddings.parquet", None, None, table, rows, extra={"pf": pf})]
        if mode != "paired":
            tf = _need(path, "texts.parquet")
            tt = pq.read_table(fsx.parquet_source(tf))
            d.class_names = [str(v) for v in tt.column("name").to_pylist()]
            d.class_texts = _matrix(tt.column("embedding"), "texts.parquet:embedding")
    d.source = {"files": len(d.shards)}
    return d


def _need(path: str, name: str) -> str:
    f = fsx.join(path, name)
    if not fsx.isfile(f):
        why = fsx.file_problem(f)
        if why and why != "no such file":
            raise EmbedxError(f"{path}: {name} is {why}" if why.endswith("not a regular file") else
                              f"{path}: {name}: {why}")
        raise EmbedxError(f"{path}: {name} is missing (not an embedx export?)")
    return f


def _count_rows(a, label: str, ndim: int = 2) -> int:
    if len(a.shape) != ndim:
        want = "2-D (rows x dim)" if ndim == 2 else "1-D"
        raise EmbedxError(f"{label} must be {want}, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) if ndim == 2 else np.issubdtype(a.dtype, np.integer)):
        raise EmbedxError(f"{label} has dtype {a.dtype}; expected {'floats' if ndim == 2 else 'integers'}")
    return int(a.shape[0])


def _table_rows(path: str, label: str) -> int:
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(fsx.parquet_source(path)).metadata.num_rows)
    except Exception as e:
        raise EmbedxError(f"{label}: not a readable parquet file ({one_line(e, 160)})") from None


def _agree(a: int, b: int, la: str, lb: str) -> None:
    if a != b:
        raise EmbedxError(f"row count mismatch: {la} has {a} rows, {lb} has {b}; the rows would be misaligned")


def _paired_rows(x, t, table: str, table_label: str) -> int:
    n = _count_rows(x, x.label)
    _agree(n, _count_rows(t, t.label), x.label, t.label)
    if x.shape[1] != t.shape[1]:
        raise EmbedxError(f"dimension mismatch: {x.label} has d={x.shape[1]}, {t.label} has d={t.shape[1]}")
    _agree(n, _table_rows(table, table_label), x.label, table_label)
    return n


def _same_dim(shards, extra=None) -> None:
    arrays = [s.images for s in shards] + ([extra] if extra is not None else [])
    d0 = arrays[0]
    for a in arrays[1:]:
        if a.shape[1] != d0.shape[1]:
            raise EmbedxError(f"ragged dump: {a.label} has d={a.shape[1]}, {d0.label} has d={d0.shape[1]}")


def _column(path: str, column: str, label: str) -> list:
    import pyarrow.parquet as pq

    names = pq.ParquetFile(fsx.parquet_source(path)).schema_arrow.names
    if column not in names:
        raise EmbedxError(f"{label} has no column {column!r} (has: {', '.join(names)})")
    return [str(v) for v in pq.read_table(fsx.parquet_source(path), columns=[column]).column(column).to_pylist()]


def _matrix(col, label: str) -> np.ndarray:
    from embedx.formats.arrays import _list_matrix

    return _list_matrix(col.combine_chunks() if hasattr(col, "combine_chunks") else col, label)


def _pick(names, wanted, candidates, label: str, what: str):
    if wanted is not None:
        if wanted not in names:
            raise EmbedxError(f"{label} has no column {wanted!r} (has: {', '.join(names)})")
        return wanted
    for c in candidates:
        if c in names:
            return c
    raise EmbedxError(f"{label} has no {what} column ({' / '.join(candidates)}; has: {', '.join(names)}); name one "
                      f"with --{'id' if what == 'id' else 'caption'}-column")


# -- import -------------------------------------------------------------------------------------------------------
ID_COLUMN = "metadata column of the ids"
CAPTION_COLUMN = "metadata column of the captions"


def _first_of(names) -> str:
    return names[0] if len(names) == 1 else f"the first of {', '.join(names)}"


def _has(*names: str):
    """``can_open``: the folder holds one of ``names`` (a file, or a folder for a name ending in ``/``)."""
    def can_open(path: str) -> bool:
        return any(fsx.isdir(fsx.join(path, n[:-1])) if n.endswith("/") else fsx.isfile(fsx.join(path, n))
                   for n in names)
    return can_open


def _datacomp_folder(path: str) -> bool:
    """``can_open`` of ``datacomp``: ``{shard}.npz`` files in the folder or in its ``metadata/``."""
    for folder in (path, fsx.join(path, "metadata")):
        if fsx.isdir(folder) and any(n.endswith(".npz") for n in fsx.listdir(folder)):
            return True
    return False


@kinds.register("dump", "clip-retrieval", can_open=_has("img_emb/", "text_emb/"),
                summary="clip-retrieval `inference` output (what autofaiss indexes): `img_emb/img_emb_{i}.npy`, "
                        "`text_emb/text_emb_{i}.npy`, `metadata/metadata_{i}.parquet`",
                options=(Option("id_column", ID_COLUMN, _first_of(ID_COLUMNS["clip-retrieval"])),
                         Option("caption_column", CAPTION_COLUMN, _first_of(CAPTION_COLUMNS["clip-retrieval"]))))
def open_clip_retrieval(path: str, **_) -> Dump:
    """The partitions (:func:`scan_clip_retrieval`); an embedx export in this layout gives its model and dtype.
    The id and caption columns are read as the rows stream (``import_dump``)."""
    d = scan_clip_retrieval(path)
    d.meta = _export_meta(path)
    d.model, d.pretrained = d.meta.get("model"), d.meta.get("pretrained")
    return d


@kinds.register("dump", "datacomp", can_open=_datacomp_folder,
                summary="a DataComp / CommonPool metadata folder: `{shard}.npz` (OpenAI CLIP features) beside "
                        "`{shard}.parquet` (uid, url, text)",
                options=(Option("features", "the feature pair NAME_img/NAME_txt", "l14 if present, else b32"),
                         Option("id_column", ID_COLUMN, _first_of(ID_COLUMNS["datacomp"])),
                         Option("caption_column", CAPTION_COLUMN, _first_of(CAPTION_COLUMNS["datacomp"]))))
def open_datacomp(path: str, features: str | None = None, **_) -> Dump:
    return scan_datacomp(path, features)


@kinds.register("dump", "npy", can_open=_has("images.npy"),
                summary="`embedx export --format npy`: images.npy, texts.npy, ids.parquet (+ labels.npy, "
                        "names.parquet)")
def open_npy(path: str) -> Dump:
    return scan_export(path, "npy")


@kinds.register("dump", "parquet", can_open=_has("embeddings.parquet"),
                summary="`embedx export --format parquet`: embeddings.parquet (+ texts.parquet)")
def open_parquet(path: str) -> Dump:
    return scan_export(path, "parquet")


def recognise(path: str) -> str:
    """The format of the dump folder ``path``: the one kind whose ``can_open`` recognises it; else one line."""
    found = kinds.recognise("dump", path)
    if len(found) == 1:
        return found[0].name
    names = ", ".join(kinds.names("dump"))
    if found:
        raise EmbedxError(f"{path} reads as {' and as '.join(k.name for k in found)}: name the format (one of "
                          f"{names})", param="kind")
    raise EmbedxError(f"{path}: no dump format recognises it (clip-retrieval: img_emb/ and text_emb/; datacomp: "
                      f"{{shard}}.npz; npy: images.npy; parquet: embeddings.parquet): name the format (one of "
                      f"{names})", param="kind")


def scan(kind: str | None, path: str, features: str | None = None, **options) -> Dump:
    """The dump of format ``kind`` (``embedx.engine.kinds``; None: :func:`recognise`) at ``path``, its layout
    checked from the headers, nothing read yet. ``features`` and ``options`` (``id_column``, ``caption_column``):
    the kind's options; one it does not take is refused."""
    path = os.fspath(path)
    k = kinds.get("dump", kind) if kind is not None else None
    if kind is not None and k is None:
        raise EmbedxError(f"unknown dump format {kind!r}; choose one of {', '.join(kinds.names('dump'))}",
                          param="kind")
    if not fsx.isdir(path):
        raise EmbedxError(f"{path}: no such folder")
    if not fsx.listdir(path):
        raise EmbedxError(f"{path} is empty: no {kind or 'dump'} shards")
    if k is None:
        k = kinds.get("dump", recognise(path))
    return k.open(path, {"features": features, **options})


def import_dump(out: str, kind: str | None, path: str, *, features: str | None = None, id_column: str | None = None,
                caption_column: str | None = None, dtype: str | None = None, model: str | None = None,
                dataset: str | None = None, overwrite: bool = False, codec: str = st.DEFAULT_CODEC,
                chunk_rows: int | None = None, pretrained: str | None = None) -> dict:
    """Stream the dump of format ``kind`` at ``path`` (a registered kind, ``embedx.engine.kinds``; None: the one
    that recognises ``path``) into a complete store at ``out``; return its metadata. ``dtype`` None keeps the
    dump's (float16 or float32; float16 for any other). ``model``/``pretrained``: the model and weights recorded
    (default: what the dump records: DataComp's features name both, an embedx export its store's; clip-retrieval
    records neither)."""
    with storage_faults(path):  # no credentials, an unreachable or silent endpoint: one line naming the dump
        d = scan(kind, path, features, id_column=id_column, caption_column=caption_column)
    msg = empty_note({**d.source, "path": path})
    if msg:
        log.warning(msg)
    kind = d.kind
    first = d.shards[0]
    src_dtype = first.images.dtype if first.images is not None else _parquet_dtype(d)
    if dtype is None:
        dtype = d.meta.get("dtype") or (str(src_dtype) if str(src_dtype) in st.DTYPES else "float16")
    if dtype not in st.DTYPES:
        raise EmbedxError(f"dtype must be float16 or float32, got {dtype!r}", param="dtype")
    st.check_target(out, overwrite)
    if d.rows == 0:
        raise EmbedxError(f"{path}: the dump has no rows")
    if pretrained is None and model is None:
        pretrained = d.pretrained or d.meta.get("pretrained")
    meta = {"model": model or d.model or d.meta.get("model"), "pretrained": pretrained, "seed": None,
            "dataset": dataset or d.meta.get("dataset") or fsx.basename(path),
            "mode": d.mode, "normalized": True, "written_by": "import",
            "source": {"format": kind, **d.source, "rows": d.rows, "path": fsx.absolute(path)}}
    if d.meta:
        meta["source"]["exported_from"] = d.meta.get("store")
    with writer_lock(out), storage_faults(out):
        st.check_target(out, overwrite)
        return _stream(out, d, meta, dtype, codec, chunk_rows, id_column, caption_column)


# -- the dump's own metadata tables, kept in the store ------------------------------------------------------------
KEPT = "source_metadata"  # the store's metadata key, and the folder inside the store that holds the copies
COPY_BLOCK = 1 << 22


def copy_file(src: str, dst: str) -> str:
    """Copy ``src`` to ``dst`` byte for byte (local paths or fsspec URLs); the sha256 of the bytes."""
    import hashlib

    h = hashlib.sha256()
    with fsx.open_binary(src) as fi, fsx.open_write(dst) as fo:
        while True:
            b = fi.read(COPY_BLOCK)
            if not b:
                break
            h.update(b)
            fo.write(b)
    return h.hexdigest()


def keep_metadata(d: Dump, store: str, id_column=None, caption_column=None) -> dict:
    """Copy every partition's metadata parquet of the clip-retrieval dump ``d`` into ``store/source_metadata/``
    under its own name, byte for byte: every column (url, similarity, NSFW, width, height, key, ... beyond the ids
    and captions the store's arrays hold), so ``embedx export --format clip-retrieval`` gives them back. Returns
    the record for the store's metadata: the files with their partition number, rows and sha256, and the id and
    caption columns the import read."""
    import pyarrow.parquet as pq

    folder = fsx.join(store, KEPT)
    fsx.makedirs(folder)
    files = []
    for shard in d.shards:
        name = fsx.basename(shard.table)
        files.append({"file": name, "partition": int(shard.extra["partition"]), "rows": int(shard.rows),
                      "sha256": copy_file(shard.table, fsx.join(folder, name))})
    label = fsx.rel(d.shards[0].table, d.path)
    names = pq.ParquetFile(fsx.parquet_source(d.shards[0].table)).schema_arrow.names
    return {"format": d.kind, "folder": KEPT, "files": files,
            "id_column": _pick(names, id_column, ID_COLUMNS[d.kind], label, "id"),
            "caption_column": _pick(names, caption_column, CAPTION_COLUMNS[d.kind], label, "caption")}


def _parquet_dtype(d: Dump):
    return np.dtype(d.meta.get("dtype", "float32"))


def _stream(out, d: Dump, meta, dtype, codec, chunk_rows, id_column, caption_column) -> dict:
    target = out.rstrip("/")
    n = d.rows
    dim = _dim(d)
    with staged(target) as tmp:  # the target holds the old store or the new one, whole
        local = tmp != target
        w = None
        try:
            w = st.StoreWriter.create(tmp, n_rows=n, dim=dim, meta=meta, dtype=dtype, codec=codec,
                                      chunk_rows=chunk_rows, background=True,
                                      n_texts=None if d.mode == "paired" else len(d.class_names))
            w.durable_commits = not local  # staged: finalize makes it durable before it is placed
            unit = True
            if d.mode != "paired":
                t = d.class_texts if isinstance(d.class_texts, np.ndarray) else \
                    d.class_texts.read(0, d.class_texts.shape[0])
                unit &= check_block(t, "texts", dtype, 0)
                w.write_texts(t, d.class_names)
            bar = Bar(n, "import", enabled(None))
            sink = _direct_sink(w, d) if local else None  # staged: synced whole before it is placed
            if sink is not None:
                ok, known = _write_direct(w, d, sink, dtype, id_column, caption_column, bar)
            else:
                ok, known = _write_blocks(w, d, dtype, id_column, caption_column, bar), None
            bar.close()
            extra = note({"normalized": bool(unit and ok)}, d.texts_truncated, "captions")
            if d.kind == "clip-retrieval":
                extra[KEPT] = keep_metadata(d, tmp, id_column, caption_column)
            return w.finalize(extra=extra, known=known)
        except BaseException:
            if w is not None:
                try:
                    w.close()
                except BaseException:
                    pass
            raise


def _write_blocks(w, d: Dump, dtype, id_column, caption_column, bar) -> bool:
    """Every row through the store writer's commits (remote or compressed stores, parquet dumps); True if every
    row has unit norm."""
    n, unit = d.rows, True
    block = max(1, BLOCK_ROWS // w.meta["chunk_rows"]) * w.meta["chunk_rows"]  # commits of whole chunks
    pos = 0
    for shard in d.shards:
        for s0, x, t, y, ids, caps in _pieces(d, shard, block, pos, id_column, caption_column):
            e = pos + len(x)
            unit &= check_block(x, shard.images.label if shard.images is not None else f"{shard.name}:image",
                                dtype, s0)
            if d.mode == "paired":
                unit &= check_block(t, shard.texts.label if shard.texts is not None else f"{shard.name}:text",
                                    dtype, s0)
                w.append(x, None, ids, text_emb=t, text_names=caps)
            else:
                w.append(x, _labels(y, len(d.class_names), shard.name, s0), ids)
            pos = e
            bar.update(len(x))
            if pos % block == 0 or pos == n:
                w.commit(pos)
        for a in (shard.images, shard.texts):
            if isinstance(a, NpzMember):
                a.release()
    return unit


def _direct_sink(w, d: Dump):
    """A sink writing the chunk files itself (``ChunkSink.direct``) when the store takes whole chunks directly and
    the dump is read by row ranges (npy/npz shards), else None."""
    from embedx.store.sink import ChunkSink

    if d.kind == "parquet" or any(not hasattr(s.images, "read_into") for s in d.shards):
        return None
    names = ["images/embeddings", "images/labels", "images/ids"] + \
        (["texts/embeddings", "texts/names"] if d.mode == "paired" else [])
    return ChunkSink.direct(w.group, w.path, names, summed=())


def _write_direct(w, d: Dump, sink, dtype, id_column, caption_column, bar) -> tuple[bool, dict]:
    """The embeddings as whole chunks on a thread pool (``embedx.store.sink.write_chunks``) while this thread
    writes the ids, labels and captions shard by shard, all through ``sink``; the sums recorded. (every row has
    unit norm, {array: the checksums of its chunks} for finalize)."""
    from concurrent.futures import ThreadPoolExecutor

    from embedx.store.sink import RowFields, plan, write_chunks

    cr = int(w.meta["chunk_rows"])
    sources = {"images/embeddings": "images", "texts/embeddings": "texts"}
    arrays = {name: plan([(getattr(s, key), s.rows) for s in d.shards], cr)
              for name, key in sources.items() if d.mode == "paired" or name == "images/embeddings"}
    fields = RowFields(sink, cr, d.mode == "paired")
    ends = np.cumsum([s.rows for s in d.shards])
    released = [0]

    last = list(arrays)[-1]  # chunk k of every array is done once this array's is (write_chunks' order)

    def on_chunk(name, k, rows):
        if name == "images/embeddings":
            bar.update(rows)
        if name == last:
            done = min(len(d.shards), int(np.searchsorted(ends, (k + 1) * cr, side="right")))
            for s in d.shards[released[0]:done]:  # an npz shard's arrays are freed once its rows are written
                for a in (s.images, s.texts):
                    if isinstance(a, NpzMember):
                        a.release()
            if done > released[0]:
                _prefetch(d.shards[done + 1:done + 2])  # the shard after the one now being read
            released[0] = max(released[0], done)

    _prefetch(d.shards[:2])
    cancel = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="embedx-import") as bg:
        job = bg.submit(write_chunks, sink, arrays, dtype, on_chunk=on_chunk, cancel=cancel)
        try:
            for shard in d.shards:
                ids, caps = _shard_strings(d, shard, id_column, caption_column, arrow=True)
                y = None
                if d.mode != "paired":
                    y = _labels(shard.labels.read(0, shard.rows), len(d.class_names), shard.name, 0)
                fields.add(ids, y, caps)
            fields.close()
        except BaseException:
            cancel.set()
            raise
        unit = job.result()
    w.record(rows_committed=d.rows, source_pos=d.rows, sums={k.split("/")[0]: v for k, v in sink.sums().items()})
    return unit, sink.known()


def _prefetch(shards) -> None:
    """Ask the kernel to read ahead these shards' npy files (``POSIX_FADV_WILLNEED``: asynchronous, into the page
    cache), so that a cold dump's disk reads overlap the checks of the shard before; a shard ahead at a time."""
    if not hasattr(os, "posix_fadvise"):
        return
    for s in shards:
        for a in (s.images, s.texts):
            if isinstance(a, NpyRows) and location(a.path).can(FADVISE):
                try:
                    fd = os.open(a.path, os.O_RDONLY | os.O_NONBLOCK)  # checked regular; never wait on a FIFO
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                    finally:
                        os.close(fd)
                except OSError:
                    pass  # advice only


def _dim(d: Dump) -> int:
    s = d.shards[0]
    if s.images is not None:
        return int(s.images.shape[1])
    t = s.extra["pf"].schema_arrow.field("image").type
    return int(t.list_size)


def _labels(y: np.ndarray, c: int, label: str, s0: int) -> np.ndarray:
    bad = np.flatnonzero((y < -1) | (y >= c))
    if len(bad):
        raise EmbedxError(f"{label}: label row {bad[0] + s0} is {y[bad[0]]}, outside -1..{c - 1}")
    return y.astype(np.int32)


def _pieces(d: Dump, shard: Shard, block: int, pos: int, id_column, caption_column):
    """(shard row, images, texts, labels, ids, captions) pieces of ``shard``, cut at the store's commit blocks
    (global position ``pos`` onwards)."""
    if d.kind == "parquet":
        yield from _parquet_pieces(d, shard, block, pos)
        return
    ids, caps = _shard_strings(d, shard, id_column, caption_column)
    s = 0
    while s < shard.rows:
        e = min(shard.rows, s + block - (pos + s) % block)
        x = shard.images.read(s, e)
        t = shard.texts.read(s, e) if shard.texts is not None else None
        y = shard.labels.read(s, e) if shard.labels is not None else None
        yield s, x, t, y, ids[s:e], (caps[s:e] if caps is not None else None)
        s = e


def _shard_strings(d: Dump, shard: Shard, id_column, caption_column, arrow: bool = False):
    """The shard's ids and captions (one shard of strings in memory): numpy str arrays, or pyarrow string arrays
    with ``arrow``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    label = fsx.rel(shard.table, d.path)
    names = pq.ParquetFile(fsx.parquet_source(shard.table)).schema_arrow.names
    if d.kind in ("npy", "parquet"):
        id_col, cap_col = "id", ("caption" if d.mode == "paired" else None)
    else:
        id_col = _pick(names, id_column, ID_COLUMNS[d.kind], label, "id")
        cap_col = _pick(names, caption_column, CAPTION_COLUMNS[d.kind], label, "caption")
    cols = [c for c in (id_col, cap_col) if c]
    table = pq.read_table(fsx.parquet_source(shard.table), columns=cols)
    ids = table.column(id_col).cast(pa.string()).combine_chunks()
    if ids.null_count:
        row = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise EmbedxError(f"{label}: row {row} has no {id_col} (null); every row needs an id")
    caps = None
    if cap_col:
        caps, cut = cap_arrow(pc.fill_null(table.column(cap_col).cast(pa.string()), "").combine_chunks())
        d.texts_truncated += cut
    if arrow:
        return ids, caps
    return (np.asarray(ids.to_pylist(), dtype=str),
            None if caps is None else np.asarray(caps.to_pylist(), dtype=str))


def _parquet_pieces(d: Dump, shard: Shard, block: int, pos: int):
    import pyarrow as pa

    pf = shard.extra["pf"]
    paired = d.mode == "paired"
    cols = ["id", "image"] + (["caption", "text"] if paired else ["label"])
    names = pf.schema_arrow.names
    for c in cols:
        if c not in names:
            raise EmbedxError(f"{shard.name} has no column {c!r} (has: {', '.join(names)})")
    s = 0
    for batch in pf.iter_batches(batch_size=block, columns=cols):
        k = 0
        while k < batch.num_rows:
            m = min(batch.num_rows - k, block - (pos + s) % block)
            b = batch.slice(k, m)
            x = _matrix(b.column("image"), f"{shard.name}:image")
            t = _matrix(b.column("text"), f"{shard.name}:text") if paired else None
            y = b.column("label").to_numpy(zero_copy_only=False) if not paired else None
            ids = np.asarray(b.column("id").to_pylist(), dtype=str)
            caps = None
            if paired:
                capped, cut = cap_arrow(b.column("caption").cast(pa.string()))
                d.texts_truncated += cut
                caps = np.asarray(capped.to_pylist(), dtype=str)
            yield s, x, t, y, ids, caps
            s += m
            k += m
