"""``embedx export STORE --format clip-retrieval|npy|parquet --out DIR``: a store as files other tools read.

* ``clip-retrieval``: ``img_emb/img_emb_{i}.npy``, ``text_emb/text_emb_{i}.npy``, ``metadata/metadata_{i}.parquet``,
  partitions of ``partition_rows`` rows numbered as clip-retrieval numbers them (zero-padded to
  ``int(log10(partitions)) + 1`` digits): what autofaiss, embedding-reader and ``clip_retrieval index`` take.
  Paired stores only. A store imported from a clip-retrieval dump keeps that dump's metadata tables
  (``embedx.formats.dumps.keep_metadata``): they come back with every column under its own name (url, similarity,
  NSFW, width, height, key, ...), byte for byte, and without ``partition_rows`` in the dump's own partitions and
  file names (the metadata files are then the very files imported, checked against their recorded sha256). Other
  stores get ``image_path`` (the store's id) and ``caption``.
  Rows are written as float32 L2-normalized in float32, as embedx's measures normalize them before scoring
  (``x.float() / ||x||``): the stored float16 rows are unit length only to float16 rounding (~1e-3), which changes
  an index's inner-product ranking and so its recall (autofaiss recall@5 0.764 against 0.766); an index built on
  the export ranks exactly as ``embedx measure --knn faiss`` does. Float32 stores are written as stored (unit rows
  already: their import checked it). ``embedx import`` of the export casts back to the dtype in ``embedx.json``:
  float16 rows come back bit for bit (renormalizing moves a float16 row by far less than half a float16 step).
* ``npy``: ``images.npy``, ``texts.npy``, ``ids.parquet`` (``id``, and ``caption`` for paired stores); class stores
  add ``labels.npy`` (int32) and ``names.parquet`` (``name``).
* ``parquet``: ``embeddings.parquet``, one row per image: ``id``, ``caption`` + ``image``, ``text`` (paired) or
  ``label`` + ``image`` (class stores; their texts in ``texts.parquet``: ``name``, ``embedding``); embeddings are
  fixed-size lists of float32 (readable by pyarrow, pandas, polars and duckdb; float16 round-trips exactly).

Every export also writes ``embedx.json`` (the store's mode, dtype, model, dataset), so ``embedx import --from
FORMAT DIR`` rebuilds the same arrays, dtype included. Rows are read in blocks of whole chunks (checked against
their content checksums) and written as they come: memory is one block. A local folder is staged and renamed into
place when complete; an fsspec URL (``s3://``, ...) is written in place, ``embedx.json`` last, and removed again
if the export fails.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import uuid

import numpy as np

from embedx.fs import files as fsx
from embedx.fs.locations import RENAME, location
from embedx.engine.progress import Bar, enabled
from embedx.errors import EmbedxError
from embedx.store import Store

FORMATS = ("clip-retrieval", "npy", "parquet")
PARTITION_ROWS = 1_000_000
META_FILE = "embedx.json"
META_KEYS = ("mode", "dtype", "dim", "model", "pretrained", "dataset", "normalized", "source")


class NpyWriter:
    """A ``.npy`` written row block by row block (header first; the shape is known up front)."""

    def __init__(self, path: str, shape: tuple, dtype):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.f = fsx.open_write(path)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self.f, header)
        self.rows = 0

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        self.f.write(memoryview(rows.reshape(-1).view(np.uint8)))
        self.rows += len(rows)

    def close(self) -> None:
        self.f.close()
        if self.rows != self.shape[0]:
            raise EmbedxError(f"{self.path}: wrote {self.rows} rows, expected {self.shape[0]}")


def _strings(s: Store, name: str, a: int, b: int) -> list:
    return [str(v) for v in s.group[name][a:b]]


def _blocks(s: Store, start: int, stop: int):
    """(a, b) row ranges of whole chunks covering ``start:stop`` (cut at ``stop``)."""
    step = s.block_rows()
    a = start
    while a < stop:
        b = min(stop, (a // step + 1) * step)
        yield a, b
        a = b


def _rows(s: Store, name: str, a: int, b: int, dim: int) -> np.ndarray:
    return s.read_rows_into(name, a, np.empty((b - a, dim), s.dtype))


def export_store(store: str, fmt: str, out: str, *, partition_rows: int | None = None,
                 overwrite: bool = False) -> dict:
    """Write the store at ``store`` as ``fmt`` (``FORMATS``) into the folder ``out``; return a summary.
    ``partition_rows`` (clip-retrieval): rows per partition; None: the partitions of the clip-retrieval dump the
    store was imported from, else ``PARTITION_ROWS``."""
    if fmt not in FORMATS:
        raise EmbedxError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}", param="fmt")
    if partition_rows is not None and partition_rows < 1:
        raise EmbedxError(f"partition_rows must be at least 1, got {partition_rows}", param="partition_rows")
    s = Store(store)
    if fmt == "clip-retrieval" and not s.paired:
        raise EmbedxError(f"{store} has class texts, not one caption per image; the clip-retrieval layout needs a "
                          f"paired store (use fmt='npy' or fmt='parquet')", param="fmt")
    out = os.fspath(out).rstrip("/")
    if fsx.exists(out) and (not fsx.isdir(out) or fsx.listdir(out)):
        if not overwrite:
            raise EmbedxError(f"{out} exists and is not empty; pass overwrite=True to replace it", param="out")
        if not fsx.isfile(fsx.join(out, META_FILE)):
            raise EmbedxError(f"{out} is not an embedx export; refusing to replace it (choose another folder)")
    if not location(out).can(RENAME):  # behind a URL: written in place, embedx.json last
        return _export_url(s, store, fmt, out, partition_rows)
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise EmbedxError(f"cannot write {out}: the folder {parent} does not exist")
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        files = _write_all(s, store, fmt, tmp, partition_rows)
        if os.path.exists(out):
            old = f"{tmp}.old"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary(s, out, fmt, files)


def _summary(s: Store, out: str, fmt: str, files: int) -> dict:
    return {"out": out, "format": fmt, "rows": s.n_images, "n_texts": s.n_texts, "dim": s.dim,
            "dtype": "float32" if fmt == "clip-retrieval" else str(s.dtype), "files": files}


def _write_all(s: Store, store: str, fmt: str, folder: str, partition_rows: int) -> int:
    """Every file of the export into ``folder``, ``embedx.json`` last; the number of files."""
    bar = Bar(s.n_images, "export", enabled(None))
    files = {"clip-retrieval": _clip_retrieval, "npy": _npy, "parquet": _parquet}[fmt](s, folder, partition_rows, bar)
    bar.close()
    meta = {k: s.meta.get(k) for k in META_KEYS}
    meta.update(format=fmt, rows=s.n_images, n_texts=s.n_texts, store=fsx.absolute(store), generation=s.generation)
    with fsx.open_write(fsx.join(folder, META_FILE)) as f:
        f.write(json.dumps(meta, indent=1).encode("utf-8"))
    s.ensure_unchanged()
    return files


def _export_url(s: Store, store: str, fmt: str, out: str, partition_rows: int) -> dict:
    """An export behind a URL: written in place (object stores have no rename), the old export removed first;
    a failure removes what was written, and ``embedx.json`` comes last, so a partial export is never taken for
    one."""
    fsx.remove_tree(out)
    try:
        files = _write_all(s, store, fmt, out, partition_rows)
    except BaseException:
        fsx.remove_tree(out)
        raise
    return _summary(s, out, fmt, files)


def _unit_rows(s: Store, name: str, a: int, b: int, d: int) -> np.ndarray:
    """Rows ``a:b`` as the export writes them: float16 stores L2-normalized in float32 exactly as the measures do
    (``embedx.measures.stream.normalized``: torch float32 norm and division); float32 stores as stored."""
    x = _rows(s, name, a, b, d)
    if x.dtype == np.float32:
        return x
    import torch

    t = torch.from_numpy(x).float()
    return (t / torch.linalg.vector_norm(t, dim=1)[:, None]).numpy()


def kept_metadata(s: Store) -> dict | None:
    """The clip-retrieval metadata tables the store's import kept (``dumps.keep_metadata``), when they still
    describe every row of the store; else None."""
    kept = s.meta.get("source_metadata")
    if not isinstance(kept, dict) or kept.get("format") != "clip-retrieval" or not kept.get("files"):
        return None
    if sum(int(f["rows"]) for f in kept["files"]) != s.n_images:
        return None
    return kept


def _layout(s: Store, kept: dict | None, partition_rows: int | None) -> list:
    """[(tag, first row, end row, kept file record or None)] of the export's partitions."""
    n = s.n_images
    if partition_rows is None and kept is not None:  # the dump's own partitions and numbering
        out, a = [], 0
        for f in kept["files"]:
            tag = f["file"][len("metadata_"):-len(".parquet")] if f["file"].startswith("metadata_") else \
                str(f["partition"])
            out.append((tag, a, a + int(f["rows"]), f))
            a += int(f["rows"])
        return out
    rows = partition_rows or PARTITION_ROWS
    parts = max(1, math.ceil(n / rows))
    width = int(math.log10(parts)) + 1  # as clip_retrieval.clip_inference.writer.OutputSink numbers them
    return [(str(k).zfill(width), k * rows, min(n, (k + 1) * rows), None) for k in range(parts)]


class KeptTables:
    """Row ranges of the kept metadata tables, read one source partition at a time (checked by sha256 once)."""

    def __init__(self, store: Store, kept: dict):
        self.folder = fsx.join(store.path, kept["folder"])
        self.files = kept["files"]
        self.ends = np.cumsum([int(f["rows"]) for f in self.files])
        self._k, self._table = -1, None

    def path(self, f: dict) -> str:
        return fsx.join(self.folder, f["file"])

    def check(self, f: dict) -> None:
        import hashlib

        h = hashlib.sha256()
        with fsx.open_binary(self.path(f)) as fh:
            for b in iter(lambda: fh.read(1 << 22), b""):
                h.update(b)
        if h.hexdigest() != f["sha256"]:
            raise EmbedxError(f"{self.path(f)}: the metadata table kept at import changed (sha256 "
                              f"{h.hexdigest()[:12]}..., recorded {f['sha256'][:12]}...); re-import the dump")

    def _read(self, k: int):
        import pyarrow.parquet as pq

        if k != self._k:
            f = self.files[k]
            self.check(f)
            self._k, self._table = k, pq.read_table(fsx.parquet_source(self.path(f)))
        return self._table

    def rows(self, a: int, b: int):
        """The metadata rows ``a:b`` as one table (the parts of several source partitions concatenated)."""
        import pyarrow as pa

        parts = []
        k = int(np.searchsorted(self.ends, a, side="right"))
        while a < b:
            start = int(self.ends[k - 1]) if k else 0
            t = self._read(k)
            e = min(b, int(self.ends[k]))
            parts.append(t.slice(a - start, e - a))
            a, k = e, k + 1
        if len(parts) == 1:
            return parts[0]
        return pa.concat_tables(parts, promote_options="default")


def _check_ids(s: Store, table, column: str, a: int, b: int) -> None:
    ids = table.column(column).cast("string").to_pylist()
    if ids != _strings(s, "images/ids", a, b):
        raise EmbedxError(f"{s.path}: the ids of rows {a}..{b - 1} differ from the clip-retrieval metadata kept at "
                          f"import (column {column!r}); re-import the dump")


def _clip_retrieval(s: Store, out: str, partition_rows: int | None, bar) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = s.dim
    kept = kept_metadata(s)
    tables = KeptTables(s, kept) if kept is not None else None
    for sub in ("img_emb", "text_emb", "metadata"):
        fsx.makedirs(fsx.join(out, sub))
    schema = pa.schema([("image_path", pa.string()), ("caption", pa.string())])
    layout = _layout(s, kept, partition_rows)
    for tag, p0, p1, f in layout:
        xi = NpyWriter(fsx.join(out, "img_emb", f"img_emb_{tag}.npy"), (p1 - p0, d), np.float32)
        xt = NpyWriter(fsx.join(out, "text_emb", f"text_emb_{tag}.npy"), (p1 - p0, d), np.float32)
        meta_path = fsx.join(out, "metadata", f"metadata_{tag}.parquet")
        if f is not None:  # the very file imported, byte for byte
            tables.check(f)
            _check_ids(s, tables.rows(p0, p1), kept["id_column"], p0, p1)
            from embedx.formats.dumps import copy_file

            copy_file(tables.path(f), meta_path)
        elif tables is not None:  # the kept tables' rows of this partition, every column
            t = tables.rows(p0, p1)
            _check_ids(s, t, kept["id_column"], p0, p1)
            with fsx.open_write(meta_path) as sink:
                pq.write_table(t, sink)
        for a, b in _blocks(s, p0, p1):
            xi.write(_unit_rows(s, "images/embeddings", a, b, d))
            xt.write(_unit_rows(s, "texts/embeddings", a, b, d))
            bar.update(b - a)
        if tables is None:
            with fsx.open_write(meta_path) as sink, pq.ParquetWriter(sink, schema) as mw:
                for a, b in _blocks(s, p0, p1):
                    mw.write_table(pa.table({"image_path": _strings(s, "images/ids", a, b),
                                             "caption": _strings(s, "texts/names", a, b)}, schema=schema))
        xi.close()
        xt.close()
    return 3 * len(layout)


def _npy(s: Store, out: str, partition_rows: int, bar) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, c, d = s.n_images, s.n_texts, s.dim
    xi = NpyWriter(fsx.join(out, "images.npy"), (n, d), s.dtype)
    xt = NpyWriter(fsx.join(out, "texts.npy"), (c, d), s.dtype)
    y = None if s.paired else NpyWriter(fsx.join(out, "labels.npy"), (n,), np.int32)
    fields = [("id", pa.string())] + ([("caption", pa.string())] if s.paired else [])
    schema = pa.schema(fields)
    with fsx.open_write(fsx.join(out, "ids.parquet")) as sink, pq.ParquetWriter(sink, schema) as mw:
        for a, b in _blocks(s, 0, n):
            xi.write(_rows(s, "images/embeddings", a, b, d))
            cols = {"id": _strings(s, "images/ids", a, b)}
            if s.paired:
                xt.write(_rows(s, "texts/embeddings", a, b, d))
                cols["caption"] = _strings(s, "texts/names", a, b)
            else:
                y.write(s.labels(a, b))
            mw.write_table(pa.table(cols, schema=schema))
            bar.update(b - a)
    if not s.paired:
        for a, b in _text_blocks(s):
            xt.write(s.read_texts(a, b))
        with fsx.open_write(fsx.join(out, "names.parquet")) as sink:
            pq.write_table(pa.table({"name": [str(v) for v in s.text_names()]}), sink)
        y.close()
    xi.close()
    xt.close()
    return 5 if not s.paired else 3


def _text_blocks(s: Store):
    step = s.group["texts/embeddings"].chunks[0] * max(1, 65536 // s.group["texts/embeddings"].chunks[0])
    for a in range(0, s.n_texts, step):
        yield a, min(s.n_texts, a + step)


def _vectors(rows: np.ndarray):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(rows, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, rows.shape[1])


def _parquet(s: Store, out: str, partition_rows: int, bar) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, d = s.n_images, s.dim
    vec = pa.list_(pa.float32(), d)
    if s.paired:
        schema = pa.schema([("id", pa.string()), ("caption", pa.string()), ("image", vec), ("text", vec)])
    else:
        schema = pa.schema([("id", pa.string()), ("label", pa.int32()), ("image", vec)])
    schema = schema.with_metadata({"embedx": json.dumps({"dtype": str(s.dtype), "mode": s.meta["mode"]})})
    with fsx.open_write(fsx.join(out, "embeddings.parquet")) as sink, pq.ParquetWriter(sink, schema) as w:
        for a, b in _blocks(s, 0, n):
            cols = {"id": pa.array(_strings(s, "images/ids", a, b), pa.string())}
            if s.paired:
                cols["caption"] = pa.array(_strings(s, "texts/names", a, b), pa.string())
                cols["image"] = _vectors(_rows(s, "images/embeddings", a, b, d))
                cols["text"] = _vectors(_rows(s, "texts/embeddings", a, b, d))
            else:
                cols["label"] = pa.array(s.labels(a, b), pa.int32())
                cols["image"] = _vectors(_rows(s, "images/embeddings", a, b, d))
            w.write_table(pa.Table.from_pydict(cols, schema=schema))
            bar.update(b - a)
    if s.paired:
        return 1
    names = [str(v) for v in s.text_names()]
    texts = np.concatenate([s.read_texts(a, b) for a, b in _text_blocks(s)]) if s.n_texts else np.empty((0, d))
    with fsx.open_write(fsx.join(out, "texts.parquet")) as sink:
        pq.write_table(pa.table({"name": pa.array(names, pa.string()), "embedding": _vectors(texts)}), sink)
    return 2
