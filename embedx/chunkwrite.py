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
  * crc32c of the chunk file's bytes and NH2 of its rows (``embedx.checksums``), so finalize need not read back
    what was just written;
  * the bytes into the chunk file (``embedx.chunkio.DirectChunks``), synced with the whole store at finalize.

Each task reads its own rows (``os.pread`` into the bytes that are checked, hashed and written: no other copy), so
memory is about (threads + queued) chunks whatever the dump's size.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from embedx.errors import EmbedxError
from embedx.rows import first_bad_row

UNIT_TOL = 1e-2  # rows whose norms are all within this of 1 keep the store's "normalized" flag


def chunk_norms_and_sum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 |x_i|, float64 of the float32 sum_i x_i / |x_i|; zero rows add nothing) of one chunk of rows."""
    import torch

    # rows read into bytes are read-only; torch warns that it cannot protect them (nothing here writes them)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
    t = torch.from_numpy(np.asarray(x)).float()
    n = torch.linalg.vector_norm(t, dim=1)
    w = torch.where(n > 0, 1.0 / n, torch.zeros_like(n))
    return n.numpy(), (w @ t).double().numpy()


@dataclass(frozen=True)
class Segment:
    """Rows ``s0:s1`` of one source array (``NpyRows``/``NpzMember``: ``label``, ``dtype``, ``read_bytes``)."""

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


def _stored_rows(seg: Segment, dtype: np.dtype) -> tuple[bytes, np.ndarray, bool, np.ndarray]:
    """(bytes as stored, those bytes as rows, all rows unit norm, sum of the normalized rows) of one segment,
    after the row checks."""
    from embedx.importer import _check_rows

    src = seg.source
    raw = src.read_bytes(seg.s0, seg.s1)
    x = np.frombuffer(raw, dtype=src.dtype).reshape(seg.s1 - seg.s0, *src.shape[1:])
    if src.dtype == dtype == np.float16:
        norms, total = chunk_norms_and_sum(x)
        bad = first_bad_row(norms)
        if bad is not None:
            raise EmbedxError(f"{src.label} row {bad[0] + seg.s0} {bad[1]}")
        return raw, x, bool(len(norms) == 0 or np.abs(norms - 1).max() < UNIT_TOL), total
    unit = _check_rows(x, src.label, str(dtype), offset=seg.s0)
    if src.dtype != dtype:
        x = np.ascontiguousarray(x.astype(dtype))
        raw = x.tobytes()
    return raw, x, unit, chunk_norms_and_sum(x)[1]


def _chunk(writer, k: int, segs: list[Segment], dtype: np.dtype) -> ChunkResult:
    import google_crc32c

    from embedx.checksums import unit_hash

    parts = [_stored_rows(s, dtype) for s in segs]
    raw = parts[0][0] if len(parts) == 1 else b"".join(p[0] for p in parts)
    x = parts[0][1] if len(parts) == 1 else np.frombuffer(raw, dtype=dtype).reshape(-1, *parts[0][1].shape[1:])
    writer.write_chunk(k, raw)
    crc = google_crc32c.value(raw)
    pad = writer.chunk_rows * writer.row_bytes - len(raw)
    if pad:
        crc = google_crc32c.extend(crc, bytes(pad))
    total = parts[0][3] if len(parts) == 1 else np.sum([p[3] for p in parts], axis=0)
    return ChunkResult(total, all(p[2] for p in parts), int(crc), unit_hash(x))


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
