"""The one way rows enter a store's chunk files: whole chunks, checksummed as they are written.

Every writer writes through a :class:`ChunkSink`: ``StoreWriter``'s commits (a serial ``embed``, ``import_arrays``,
``import --from`` into a compressed or remote store, a cluster embed's compaction), the thread pool of
``import --from`` (:func:`write_chunks`, :class:`RowFields`) and the tasks of a cluster embed (each its own chunks).
Chunk ``k`` of an array is written whole: its rows, padded to the chunk with the array's fill value (as zarr stores
an edge chunk), so zarr never reads an old chunk to merge into. As it is written the sink takes

  * ``crc32c`` of the chunk file's bytes as written: from the buffer for direct writes, else from the encoded
    bytes zarr hands the store (:class:`ChecksumStore` sits under the sink's group: any codec, any URL);
  * NH2 (``kernels.content_hash``) of the chunk's rows, for ``checksums.CONTENT_ARRAYS``;
  * the float64 sum of its L2-normalized rows (:func:`normalized_sum`) for the arrays it sums, or the sum the
    caller computed in its own pass over the rows;

and folds them in chunk order: the inventory ``crc32c``/``content`` lists and the store's ``sums``
(``S = ((0 + s_0) + s_1) + ...``, s_k the sum of chunk k), the same additions in the same order whoever wrote the
chunks and whenever (a serial run's commits fall anywhere; a cluster's tasks finish in any order). So finalize
records the inventory and the sums without reading anything back.

Two ways to put bytes in a chunk file: through zarr (atomic replacement of each key, any codec, local or URL:
stores written in place, resumable) or ``direct`` (``embedx.store.chunkio``: plain row bytes or vlen-utf8 strings
straight into the file, for staged local stores, which are synced whole before they are placed).

A ``StoreWriter`` appends rows in order (:meth:`ChunkSink.append`): whole chunks are written as they fill, and a
commit writes the partial last chunk too (:meth:`ChunkSink.flush`, rewritten whole when more rows come), so its
rows are durable. A resumed writer first reads back what was committed (:meth:`ChunkSink.resume`), once.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from zarr.storage import WrapperStore

from embedx.errors import EmbedxError
from embedx.rows import check_block
from embedx.store.layout import ARRAYS, CONTENT_ARRAYS, chunk_files

SUM_SLICE = 4096  # rows per float64 slice of normalized_sum
# Every chunk is a file, even one equal to the fill value (labels all -1: a reader would take a missing one for
# damage); skipping zarr's per-chunk emptiness scan also makes writes ~7x faster.
WRITE_ALL = {"write_empty_chunks": True}


def normalized_sum(rows: np.ndarray) -> np.ndarray:
    """float64 sum of the L2-normalized rows (zero rows contribute nothing). Stores keep these sums of the
    committed rows in attrs["embedx"]["sums"], so measures needing sum_i x_i up front run in one pass.

    sum_i x_i / |x_i| in float64 slices of SUM_SLICE rows: per slice the norms, then one weighted row sum, both
    numpy einsum loops (single-threaded, so the same bits on any machine; no full-size temporaries: ~30x the
    speed of normalizing a float64 copy of every row)."""
    x = np.asarray(rows)
    out = np.zeros(x.shape[1])
    for a in range(0, len(x), SUM_SLICE):
        s = x[a:a + SUM_SLICE].astype(np.float64)
        n = np.sqrt(np.einsum("ij,ij->i", s, s))
        out += np.einsum("i,ij->j", np.divide(1.0, n, out=np.zeros_like(n), where=n > 0), s)
    return out


class ChecksumStore(WrapperStore):
    """A zarr store that passes every write on and keeps the crc32c of each value written, by key (the last write
    of a key wins): the bytes of a chunk file exactly as zarr encoded them."""

    def __init__(self, store):
        super().__init__(store)
        self.crcs: dict[str, int] = {}

    def _seen(self, key: str, value) -> None:
        from embedx.store.checksums import crc32c_of

        self.crcs[key] = crc32c_of(value.as_numpy_array())

    async def set(self, key, value) -> None:
        self._seen(key, value)
        await self._store.set(key, value)

    async def set_if_not_exists(self, key, value) -> None:
        self._seen(key, value)
        await self._store.set_if_not_exists(key, value)

    async def _set_many(self, values) -> None:
        for key, value in values:
            await self.set(key, value)


@dataclass
class Written:
    """What the sink took of one chunk as it wrote it. ``final``: no more rows will come to it."""

    crc32c: int
    content: str | None
    sum: np.ndarray | None
    final: bool


class _Array:
    """One array the sink writes: its chunking, fill value and how its bytes are put in its chunk files."""

    def __init__(self, name: str, arr, writer):
        self.name, self.arr, self.writer = name, arr, writer  # writer: a chunkio direct writer, or None: zarr
        self.chunk_rows = int(arr.chunks[0])
        self.fill = arr.metadata.fill_value
        self.strings = arr.dtype.kind not in "fiub"  # ids, captions, class names

    def chunk_key(self, k: int) -> str:
        return f"{self.arr.path}/{self.arr.metadata.encode_chunk_key((k,) + (0,) * (self.arr.ndim - 1))}"


class ChunkSink:
    """Whole chunks into the arrays ``names`` of the store ``group`` (at ``root``), checksummed as they are
    written (module docstring). ``summed``: the arrays whose rows the sink sums itself; ``first_chunk``: the
    first chunk it writes (a cluster task's own chunks: ``known`` lists theirs). Thread-safe: chunks may be put
    from several threads, in any order."""

    def __init__(self, group, root: str, names=ARRAYS, *, summed=("images/embeddings",), direct: dict | None = None,
                 first_chunk: int = 0):
        self.root = str(root)
        self.summed = set(summed)
        self._store = None
        arrays = {}
        if direct is None:
            import zarr

            self._store = ChecksumStore(group.store)
            wrapped = zarr.open_group(store=self._store, mode="r+", path=group.path or None)
            for name in names:
                arrays[name] = _Array(name, wrapped[name].with_config(WRITE_ALL), None)
        else:
            for name in names:
                arrays[name] = _Array(name, group[name], direct[name])
        self._arrays = arrays
        self._lock = threading.Lock()
        self._written: dict[str, dict[int, Written]] = {n: {} for n in names}
        self._next = {n: int(first_chunk) for n in names}  # the first chunk not yet folded
        self._crc: dict[str, list] = {n: [] for n in names}
        self._content: dict[str, list] = {n: [] for n in names}
        self._sum: dict[str, np.ndarray | None] = {n: None for n in names}
        self._tail: dict[str, np.ndarray | None] = {n: None for n in names}  # rows of the chunk being filled
        self._start = {n: int(first_chunk) * a.chunk_rows for n, a in arrays.items()}  # the tail's first row

    @classmethod
    def direct(cls, group, root: str, names, **kw) -> "ChunkSink | None":
        """A sink that writes the chunk files itself (``chunkio``), or None if any of the arrays does not qualify
        (compressed embeddings, a remote store, ...): for staged local stores only (module docstring)."""
        from embedx.store.chunkio import direct_writer, string_writer

        writers = {}
        for name in names:
            arr = group[name]
            w = string_writer(arr) if arr.dtype.kind not in "fiub" else direct_writer(arr)
            if w is None or (name == "images/labels" and arr.dtype != np.int32):
                return None
            writers[name] = w
        return cls(group, root, names, direct=writers, **kw)

    # -- whole chunks ---------------------------------------------------------------------------------------
    def put(self, name: str, k: int, rows, norm_sum: np.ndarray | None = None, final: bool = True) -> Written:
        """Write chunk ``k`` of ``name`` whole from ``rows`` (its rows, in order: all of them, or the first ones of
        the array's last chunk; numpy, or pyarrow strings); ``norm_sum``: the sum of its normalized rows when the
        caller has it.
        ``final=False``: more rows will come to this chunk (it will be put again)."""
        a = self._arrays[name]
        crc = self._write(a, k, rows)
        content = None
        if name in CONTENT_ARRAYS:
            from embedx.store.checksums import unit_hash

            content = unit_hash(np.ascontiguousarray(rows))
        if norm_sum is not None:
            norm_sum = np.asarray(norm_sum, dtype=np.float64)
        elif name in self.summed:
            norm_sum = normalized_sum(rows)
        w = Written(crc, content, norm_sum, final)
        self._record(name, k, w)
        return w

    def _write(self, a: _Array, k: int, rows) -> int:
        """Chunk ``k``'s bytes into its file; their crc32c."""
        if a.writer is not None:
            from embedx.store.checksums import crc32c_of

            if a.strings:
                data = a.writer.write_chunk(k, _arrow(rows))
                return crc32c_of(data)
            rows = np.ascontiguousarray(rows)
            pad = a.writer.write_chunk(k, rows)
            crc = crc32c_of(rows)
            return crc32c_of(pad, crc) if pad else crc
        arr = a.arr
        r0 = k * a.chunk_rows
        r1 = min(r0 + a.chunk_rows, arr.shape[0])  # a complete chunk for zarr: it never reads the old one
        if a.strings and not isinstance(rows, np.ndarray):
            rows = np.asarray(rows.to_pylist(), dtype=str)
        if len(rows) < r1 - r0:
            pad = np.full((r1 - r0 - len(rows),) + tuple(arr.shape[1:]), a.fill,
                          dtype=rows.dtype if a.strings else arr.dtype)
            rows = np.concatenate([rows, pad])
        arr[r0:r1] = rows
        return self._store.crcs.pop(a.chunk_key(k))

    def _record(self, name: str, k: int, w: Written) -> None:
        with self._lock:
            if k < self._next[name]:
                raise ValueError(f"{name}: chunk {k} was already final")
            self._written[name][k] = w
            self._fold()

    def _fold(self, seal: bool = False) -> None:
        """Fold the chunks that are final, in chunk order (``seal``: every chunk written is final now)."""
        for name, written in self._written.items():
            while self._next[name] in written and (seal or written[self._next[name]].final):
                w = written.pop(self._next[name])
                self._crc[name].append(w.crc32c)
                if w.content is not None:
                    self._content[name].append(w.content)
                if w.sum is not None:
                    self._sum[name] = _plus(self._sum[name], w.sum)
                self._next[name] += 1
            if seal and written:
                raise ValueError(f"{name}: chunks {sorted(written)} written, chunk {self._next[name]} never was")

    # -- rows in order (StoreWriter) -----------------------------------------------------------------------
    def append(self, name: str, rows: np.ndarray) -> None:
        """The next rows of ``name``: each chunk they complete is written (final); the rest wait for more."""
        cr = self._arrays[name].chunk_rows
        tail = self._tail[name]
        if tail is not None and len(tail):
            rows = np.concatenate([tail, rows])
        r0 = self._start[name]
        full = len(rows) // cr * cr
        for a in range(0, full, cr):
            self.put(name, (r0 + a) // cr, rows[a:a + cr])
        self._tail[name] = rows[full:].copy()  # a copy: not a view holding the whole block
        self._start[name] = r0 + full

    def flush(self, final: bool = False) -> None:
        """Write every array's partly filled chunk whole (its rows so far, padded), so a commit makes them durable;
        ``final``: no row will follow (the store's, or the array's, last chunk)."""
        for name, tail in self._tail.items():
            if tail is not None and len(tail):
                self.put(name, self._start[name] // self._arrays[name].chunk_rows, tail, final=final)
                if final:
                    self._start[name] += len(tail)
                    self._tail[name] = None

    def write_all(self, name: str, rows: np.ndarray) -> None:
        """Every row of ``name`` at once (class texts), chunk by chunk."""
        self.append(name, rows)
        tail = self._tail[name]
        if tail is not None and len(tail):
            self.put(name, self._start[name] // self._arrays[name].chunk_rows, tail)
            self._start[name] += len(tail)
            self._tail[name] = None

    def resume(self, names, n: int, complete: bool = False) -> None:
        """Continue ``names`` after their first ``n`` rows, which an earlier writer committed: read back once
        (their chunk files' crc32c, their rows' content hashes and sums; the rows of a partly filled last chunk
        are kept, to be written whole with the rows that follow). ``complete``: no row will follow."""
        from embedx.store.checksums import _crc32c, unit_hash

        for name in names:
            a = self._arrays[name]
            for k, path, r0, r1 in chunk_files(self.root, a.arr, name, 0, n):
                rows = a.arr[r0:r1 + 1]
                full = complete or r1 + 1 - r0 == a.chunk_rows
                self._record(name, k, Written(
                    _crc32c(path), unit_hash(np.ascontiguousarray(rows)) if name in CONTENT_ARRAYS else None,
                    normalized_sum(rows) if name in self.summed else None, full))
                if full:
                    self._start[name] = r1 + 1
                else:
                    self._tail[name], self._start[name] = np.asarray(rows), r0

    # -- what was written ----------------------------------------------------------------------------------
    def sum(self, name: str) -> np.ndarray | None:
        """The fold of the sums of ``name``'s chunks so far (a partly filled last chunk included), or None."""
        with self._lock:
            out = self._sum[name]
            for k in sorted(self._written[name]):
                s = self._written[name][k].sum
                if s is not None:
                    out = _plus(out, s)
            return out

    def known(self) -> dict:
        """{array: {"crc32c": [per chunk file], "content": [per chunk, CONTENT_ARRAYS]}} of every array written
        (all chunks final now: finalize's inventory, nothing read back)."""
        with self._lock:
            self._fold(seal=True)
            return {n: {"crc32c": list(self._crc[n]), **({"content": list(self._content[n])}
                                                         if n in CONTENT_ARRAYS else {})}
                    for n in self._arrays if self._crc[n]}

    def sums(self) -> dict:
        """{array: the fold of its chunk sums} of the arrays with sums."""
        out = {n: self.sum(n) for n in self._arrays}
        return {n: s for n, s in out.items() if s is not None}


def _plus(a, b):
    """``a + b`` in float64, the fold's one step; ``None + b`` is ``0 + b`` (which also turns -0.0 into 0.0)."""
    return (np.zeros(len(b)) if a is None else a) + b


def _arrow(strings):
    """``strings`` as a pyarrow string array (numpy str arrays converted)."""
    import pyarrow as pa

    return strings if isinstance(strings, (pa.Array, pa.ChunkedArray)) else pa.array(list(map(str, strings)), pa.string())


# -- import --from: whole chunks of dump shards on a thread pool ---------------------------------------------------
def chunk_norms_and_sum(x: np.ndarray, scratch=None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 |x_i|, float64 of the float32 sum_i x_i / |x_i|; zero rows add nothing) of one chunk of rows.
    ``scratch``: a float32 tensor of at least ``x``'s size to convert into (no allocation per chunk).

    float32 norms and one float32 weighted row sum (torch, one thread: about 3x the float64 ``normalized_sum``,
    within about 1e-6 of it relative): an import's recorded sums are these, folded in float64 over the chunks in
    chunk order. Stores record sums as hints; the measures check a hint against the sums of their own pass before
    they use it (``measures.cosine.HINT_EFFECT``)."""
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


def _segment(src, s0: int, x: np.ndarray, raw: np.ndarray, dtype: np.dtype, scratch) -> tuple[bool, np.ndarray]:
    """The row check (``embedx.rows.check_block``) of one segment, rows ``s0:`` of ``src`` (``x`` as stored,
    ``raw`` as in the dump): (all rows unit norm, sum of the normalized rows). Rows kept as float16 are judged by
    the norms of the same pass as the sum; any others as they are in the dump."""
    norms, total = chunk_norms_and_sum(x, scratch)
    if src.dtype == dtype == np.float16:
        return check_block(x, src.label, str(dtype), offset=s0, norms=norms), total
    return check_block(raw, src.label, str(dtype), offset=s0), total


def _chunk(sink: ChunkSink, name: str, k: int, segs: list[Segment], dtype: np.dtype) -> bool:
    """Chunk ``k`` of ``name``: its segments read into this thread's buffer (converted to ``dtype`` where they
    differ), checked, summed, then put in the sink (written and checksummed). True if every row has unit norm."""
    a = sink._arrays[name]
    row_shape = tuple(a.arr.shape[1:])
    row_elems = int(np.prod(row_shape))
    row_bytes = row_elems * dtype.itemsize
    rows = sum(s.s1 - s.s0 for s in segs)
    buf, scratch = _scratch(rows * row_bytes, rows * row_elems)
    unit, total, at = True, np.zeros(row_elems), 0
    for seg in segs:
        src, n = seg.source, seg.s1 - seg.s0
        out = buf[at * row_bytes:(at + n) * row_bytes].view(dtype).reshape(n, *row_shape)
        if src.dtype == dtype:
            raw = src.read_into(seg.s0, seg.s1, out)
        else:  # another dtype in the dump: checked as it is, stored converted
            raw = src.read(seg.s0, seg.s1)
            with np.errstate(over="ignore"):  # an overflow is the check's one-line error
                out[...] = raw
        ok, part = _segment(src, seg.s0, out, raw, dtype, scratch)
        unit &= ok
        total += part
        at += n
    sink.put(name, k, buf.view(dtype).reshape(rows, *row_shape), norm_sum=total)
    return unit


def write_chunks(sink: ChunkSink, chunks: dict, dtype, threads: int | None = None, on_chunk=None,
                 cancel=None) -> bool:
    """Write ``chunks`` ({array: its chunks' segments, from ``plan``}) through ``sink`` on a thread pool, chunk k
    of every array before chunk k + 1 of any; True if every row has unit norm. ``on_chunk(name, k, rows)`` after
    each chunk, in that order. The first bad row (in chunk order) raises its one-line error; the chunks still
    queued are cancelled (also when the event ``cancel`` is set: the caller failed)."""
    dtype = np.dtype(dtype)
    threads = threads or max(1, min(os.cpu_count() or 1, 4))
    names = list(chunks)
    order = [(n, k) for k in range(max(len(c) for c in chunks.values())) for n in names if k < len(chunks[n])]
    unit = True
    with ThreadPoolExecutor(threads, thread_name_prefix="embedx-chunks") as pool:
        def task(n, k):
            if cancel is not None and cancel.is_set():
                raise EmbedxError("cancelled")
            return _chunk(sink, n, k, chunks[n][k], dtype)

        futures = [pool.submit(task, n, k) for n, k in order]
        try:
            for f, (n, k) in zip(futures, order):
                unit &= f.result()
                if on_chunk is not None:
                    on_chunk(n, k, sum(s.s1 - s.s0 for s in chunks[n][k]))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return unit


class RowFields:
    """The ids, labels and (paired) captions of the rows, put in the sink as whole chunks as shards arrive (a
    chunk may span two shards; the last one is padded): ids and captions from pyarrow strings, labels as int32."""

    def __init__(self, sink: ChunkSink, chunk_rows: int, paired: bool):
        self.sink, self.chunk_rows, self.paired = sink, chunk_rows, paired
        self.pending: list = []  # (ids, labels, captions) pieces not yet in a chunk
        self.rows = 0  # rows written
        self.k = 0

    def add(self, ids, labels: np.ndarray | None, captions=None) -> None:
        """The next rows' ids (pyarrow strings), labels (int32; None for paired stores: row i's label is i) and
        captions (pyarrow strings, paired stores)."""
        self.pending.append((ids, labels, captions))
        while sum(len(p[0]) for p in self.pending) >= self.chunk_rows:
            self._flush(self.chunk_rows)

    def close(self) -> None:
        """Write the last partial chunk."""
        n = sum(len(p[0]) for p in self.pending)
        if n:
            self._flush(n)

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
        ids, labels, caps = self._take(n)
        r0 = self.rows
        if labels is None:
            labels = np.arange(r0, r0 + n, dtype=np.int32)
        self.sink.put("images/labels", self.k, np.ascontiguousarray(labels, dtype=np.int32))
        self.sink.put("images/ids", self.k, ids)
        if self.paired:
            self.sink.put("texts/names", self.k, caps)
        self.rows += n
        self.k += 1
