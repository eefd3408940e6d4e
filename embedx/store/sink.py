"""Embedding rows written as whole chunks straight into a staged local store (``embedx import --from ...``'s path
when the store is local and uncompressed): one pass per chunk, on a thread pool, over the bytes as stored.

For chunk k of ``images/embeddings`` or ``texts/embeddings`` (rows r0:r1, read from one or two source shards):

  * the row checks of ``embedx import``: float16 rows kept as float16 are judged by their norms (finite,
    nonzero, in range: ``embedx.rows.first_bad_row``), taken in the same pass as the sum below; any other
    conversion goes through ``importer._check_rows`` (overflow, lost directions);
  * sum_i x_i / |x_i| of the chunk: float32 norms and one float32 weighted row sum (torch, one thread: about 3x the
    float64 ``store.normalized_sum``, within about 1e-6 of it relative), folded in float64 over the chunks in chunk
    order, so the recorded sums do not depend on the thread count. Stores record these sums as hints; the measures
    check a hint against the sums of their own pass before they use it (``measures.cosine.HINT_EFFECT``);
  * crc32c of the chunk file's bytes and NH2 of its rows (``embedx.store.checksums``), so finalize need not read back
    what was just written;
  * the bytes into the chunk file (``embedx.store.chunkio.DirectChunks``), synced with the whole store at finalize.

Each task reads its own rows (``preadv``) into its thread's buffer, which is then checked, hashed and written: no
other copy, and no large allocation per chunk (which glibc's heap would keep: RSS grew to 3x a shard). Memory is
a chunk or two per thread, whatever the dump's size.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from embedx.errors import EmbedxError
from embedx.rows import first_bad_row

UNIT_TOL = 1e-2  # rows whose norms are all within this of 1 keep the store's "normalized" flag


def chunk_norms_and_sum(x: np.ndarray, scratch=None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 |x_i|, float64 of the float32 sum_i x_i / |x_i|; zero rows add nothing) of one chunk of rows.
    ``scratch``: a float32 tensor of at least ``x``'s size to convert into (no allocation per chunk)."""
    import torch

    src = torch.from_numpy(np.asarray(x))
    t = src.float() if scratch is None else scratch[:src.numel()].view(src.shape).copy_(src)
    n = torch.linalg.vector_norm(t, dim=1)
    w = torch.where(n > 0, 1.0 / n, torch.zeros_like(n))
    return n.numpy(), (w @ t).double().numpy()


_local = threading.local()  # each pool thread's buffers, reused chunk after chunk (no large allocation per chunk)


def _scratch(nbytes: int, elems: int):
    """This thread's byte buffer of ``nbytes`` and float32 tensor of ``elems`` (grown when too small)."""
    import torch

    if getattr(_local, "raw", None) is None or len(_local.raw) < nbytes:
        _local.raw = np.empty(nbytes, np.uint8)
    if getattr(_local, "f32", None) is None or _local.f32.numel() < elems:
        _local.f32 = torch.empty(elems, dtype=torch.float32)
    return _local.raw[:nbytes], _local.f32


@dataclass(frozen=True)
class Segment:
    """Rows ``s0:s1`` of one source array (``NpyRows``/``NpzMember``: ``label``, ``dtype``, ``read_into``)."""

    source: object
    s0: int
    s1: int


@dataclass
class ChunkResult:
    sum: np.ndarray
    unit: bool
    crc32c: int
    content: str


def plan(rows_of: list, chunk_rows: int) -> list[list[Segment]]:
    """The segments of each chunk: ``rows_of`` lists (source, rows) in row order; chunk k covers global rows
    k*chunk_rows .. (k+1)*chunk_rows - 1, cut where one source ends and the next begins."""
    chunks, cur, room = [], [], chunk_rows
    for source, n in rows_of:
        s = 0
        while s < n:
            take = min(room, n - s)
            cur.append(Segment(source, s, s + take))
            s, room = s + take, room - take
            if room == 0:
                chunks.append(cur)
                cur, room = [], chunk_rows
    if cur:
        chunks.append(cur)
    return chunks


def _check(src, s0: int, x: np.ndarray, raw: np.ndarray, dtype: np.dtype, scratch) -> tuple[bool, np.ndarray]:
    """The row checks of one segment (rows ``s0:`` of ``src``; ``x`` as stored, ``raw`` as in the dump); (all rows
    unit norm, sum of the normalized rows). float16 rows kept as float16 are judged by their norms from the same
    pass as the sum; any other rows by ``importer._check_rows`` (float64: overflow, directions lost in the
    conversion)."""
    from embedx.formats.arrays import _check_rows

    if src.dtype == dtype == np.float16:
        norms, total = chunk_norms_and_sum(x, scratch)
        bad = first_bad_row(norms)
        if bad is not None:
            raise EmbedxError(f"{src.label} row {bad[0] + s0} {bad[1]}")
        return bool(len(norms) == 0 or np.abs(norms - 1).max() < UNIT_TOL), total
    return _check_rows(raw, src.label, str(dtype), offset=s0), chunk_norms_and_sum(x, scratch)[1]


def _file_crc(data, pad: bytes) -> int:
    """crc32c of a chunk file: its rows' bytes, then the padding its writer added."""
    from embedx.store.checksums import crc32c_of

    crc = crc32c_of(data)
    return crc32c_of(pad, crc) if pad else crc


def _chunk(writer, k: int, segs: list[Segment], dtype: np.dtype) -> ChunkResult:
    """Chunk ``k``: its segments read into this thread's buffer (converted to ``dtype`` where they differ), checked,
    summed, checksummed and written."""
    from embedx.store.checksums import unit_hash

    rows = sum(s.s1 - s.s0 for s in segs)
    row_elems = int(np.prod(writer.row_shape))
    buf, scratch = _scratch(rows * writer.row_bytes, rows * row_elems)
    unit, total, at = True, np.zeros(row_elems), 0
    for seg in segs:
        src, n = seg.source, seg.s1 - seg.s0
        out = buf[at * writer.row_bytes:(at + n) * writer.row_bytes].view(dtype).reshape(n, *writer.row_shape)
        if src.dtype == dtype:
            raw = src.read_into(seg.s0, seg.s1, out)
        else:  # another dtype in the dump: checked as it is, stored converted
            raw = src.read(seg.s0, seg.s1)
            with np.errstate(over="ignore"):  # an overflow is the checks' one-line error
                out[...] = raw
        ok, part = _check(src, seg.s0, out, raw, dtype, scratch)
        unit &= ok
        total += part
        at += n
    x = buf.view(dtype).reshape(rows, *writer.row_shape)
    pad = writer.write_chunk(k, buf)
    return ChunkResult(total, unit, _file_crc(buf, pad), unit_hash(x))


def write_chunks(arrays: dict, dtype, threads: int | None = None, on_chunk=None, cancel=None) -> dict:
    """Write ``arrays`` ({name: (DirectChunks writer, chunks from ``plan``)}), chunk k of every array before chunk
    k + 1 of any; return {name: {"sum": float64 sum of its normalized rows, "unit": bool, "crc32c": [...],
    "content": [...]}} in chunk order. ``on_chunk(name, k, rows)`` after each chunk, in that order. The first bad
    row (in chunk order) raises its one-line error; the chunks still queued are cancelled (also when the event
    ``cancel`` is set: the caller failed)."""
    dtype = np.dtype(dtype)
    threads = threads or max(1, min(os.cpu_count() or 1, 4))
    names = list(arrays)
    out = {n: {"sum": np.zeros(w.row_shape[-1]), "unit": True, "crc32c": [], "content": []}
           for n, (w, _) in arrays.items()}
    order = [(n, k) for k in range(max(len(c) for _, c in arrays.values())) for n in names
             if k < len(arrays[n][1])]
    with ThreadPoolExecutor(threads, thread_name_prefix="embedx-chunks") as pool:
        def task(n, k):
            if cancel is not None and cancel.is_set():
                raise EmbedxError("cancelled")
            return _chunk(arrays[n][0], k, arrays[n][1][k], dtype)

        futures = [pool.submit(task, n, k) for n, k in order]
        try:
            for f, (n, k) in zip(futures, order):
                r = f.result()
                o = out[n]
                o["sum"] += r.sum
                o["unit"] &= r.unit
                o["crc32c"].append(r.crc32c)
                o["content"].append(r.content)
                if on_chunk is not None:
                    on_chunk(n, k, sum(s.s1 - s.s0 for s in arrays[n][1][k]))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return out


class RowFields:
    """The ids, labels and (paired) captions of the rows, written as whole chunks as shards arrive (a chunk may
    span two shards; the last one is padded by its writer): strings by ``chunkio.StringChunks``, labels as plain
    int32 chunks. Their checksums (crc32c; NH2 for labels) for finalize, as ``write_chunks`` gives them."""

    def __init__(self, ids, labels, names, chunk_rows: int, paired: bool):
        self.writers = {"images/ids": ids, "images/labels": labels, "texts/names": names}
        self.chunk_rows, self.paired = chunk_rows, paired
        self.pending: list = []  # (ids, labels, captions) pieces not yet in a chunk
        self.rows = 0  # rows written
        self.k = 0
        self.sums = {name: {"crc32c": [], "content": []} for name in self.writers if self.writers[name] is not None}

    @classmethod
    def open(cls, w) -> "RowFields | None":
        """For the store writer ``w``, or None if any of its row-field arrays is not written this way."""
        from embedx.store.chunkio import direct_writer, string_writer

        ids, labels = string_writer(w.group["images/ids"]), direct_writer(w.group["images/labels"])
        names = string_writer(w.group["texts/names"]) if w.paired else None
        if ids is None or labels is None or (w.paired and names is None) or labels.dtype != np.int32:
            return None
        return cls(ids, labels, names, int(w.meta["chunk_rows"]), w.paired)

    def add(self, ids, labels: np.ndarray | None, captions=None) -> None:
        """The next rows' ids (pyarrow strings), labels (int32; None for paired stores: row i's label is i) and
        captions (pyarrow strings, paired stores)."""
        self.pending.append((ids, labels, captions))
        while sum(len(p[0]) for p in self.pending) >= self.chunk_rows:
            self._flush(self.chunk_rows)

    def close(self) -> dict:
        """Write the last partial chunk; the checksums {array: {"crc32c", "content"}}."""
        n = sum(len(p[0]) for p in self.pending)
        if n:
            self._flush(n)
        return {k: (v if k == "images/labels" else {"crc32c": v["crc32c"]}) for k, v in self.sums.items()}

    def _take(self, n: int):
        import pyarrow as pa

        ids, labels, caps, got = [], [], [], 0
        while got < n:
            i, y, c = self.pending[0]
            m = min(n - got, len(i))
            ids.append(i.slice(0, m))
            labels.append(None if y is None else y[:m])
            caps.append(None if c is None else c.slice(0, m))
            if m == len(i):
                self.pending.pop(0)
            else:
                self.pending[0] = (i.slice(m), None if y is None else y[m:], None if c is None else c.slice(m))
            got += m
        join = (lambda parts: parts[0] if len(parts) == 1 else pa.concat_arrays(parts))
        return join(ids), (None if labels[0] is None else np.concatenate(labels)), (None if caps[0] is None
                                                                                    else join(caps))

    def _flush(self, n: int) -> None:
        from embedx.store.checksums import unit_hash

        ids, labels, caps = self._take(n)
        r0 = self.rows
        if labels is None:
            labels = np.arange(r0, r0 + n, dtype=np.int32)
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        pad = self.writers["images/labels"].write_chunk(self.k, labels)
        self.sums["images/labels"]["crc32c"].append(_file_crc(labels, pad))
        self.sums["images/labels"]["content"].append(unit_hash(labels))
        for name, strings in (("images/ids", ids), ("texts/names", caps)):
            if self.writers[name] is not None:
                self.sums[name]["crc32c"].append(_file_crc(self.writers[name].write_chunk(self.k, strings), b""))
        self.rows += n
        self.k += 1
