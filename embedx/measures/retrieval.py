"""Retrieval recall@k for paired stores, exact, from rank counts: the similarities are never materialized.

Rows sharing a source id are one item (an image with several captions: every caption is a positive). The
image queries are the distinct images u (the first row of each item), the text queries every text j, and
pos(j) is j's item. With unit rows q_u, t_j and s[u, j] = q_u.t_j:

  i2t  p*_u = max_{j: pos(j) = u} s[u, j]    better_u = #{j : pos(j) != u, s[u, j] > p*_u}
  t2i  p*_j = s[pos(j), j]                   better_j = #{u != pos(j) : s[u, j] > p*_j}

A query hits at k iff better < k, i.e. a positive is in its top k. Ties follow stable sorting: the lowest
index wins. Exact ties come from identical unit vectors (duplicate captions, the same image twice): a candidate
identical to the best positive j* (i2t; the best positive is the first of the best-scoring ones) ranks ahead of
it iff its index is lower, and so does an image identical to pos(j) (t2i); these are counted by index
(:class:`_TiePlan`), the sweep leaves them out. recall@k is the mean over the queries of each side. The
thresholds p* come from one O(N d) float64 pass over the aligned rows; both sides' counts from one sweep of
``kernels.rank_count`` over the U x N tiles (distinct images as row blocks, texts as column blocks).

``recall_at_k_streamed`` reads the store in blocks (memory O(block d + N)): the executor runs the thresholds pass
as tasks of whole blocks and the sweep as one task per tile, each reading its rows from the store and returning
(i2t counts of its rows, t2i counts of its columns); ``recall_at_k`` takes rows held in memory and also serves
``knn="faiss"`` (FAISS exact inner-product top-k, which needs every row in memory).
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from embedx import kernels
from embedx import validate
from embedx.engine.progress import Bar, enabled
from embedx.measures.silhouette import CACHE_BYTES, resident_budget, resident_rows
from embedx.measures.stream import normalized
from embedx.rows import duplicate_groups, group_ids, groups_from_hashes, row_hashes

KS = (1, 5, 10)
ROW_BLOCK = 4096    # distinct images per sweep row block
COL_BLOCK = 16384   # text rows per column block read from the store


def groups_from_ids(ids) -> np.ndarray:
    """Rows with the same source id are one item: group = index of the id's first row."""
    _, first, inv = np.unique(np.asarray(ids), return_index=True, return_inverse=True)
    return first[inv]


def _items(groups) -> tuple[np.ndarray, np.ndarray]:
    """(row of each distinct image, ascending; pos: the item index of every row)."""
    _, first, inv = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inv.ravel()]


def _image_thresholds(b_thr: np.ndarray, pos: np.ndarray, n_items: int) -> np.ndarray:
    """p*_u = max of the thresholds p*_j of u's texts (s[u, j] for every positive j of u)."""
    a_thr = np.full(n_items, -np.inf)
    np.maximum.at(a_thr, pos, b_thr)
    return a_thr


def _recall(i2t_better: np.ndarray, t2i_better: np.ndarray, ks) -> dict:
    return {f"{side}_recall@{k}": float((better < k).mean())
            for side, better in (("i2t", i2t_better), ("t2i", t2i_better)) for k in ks}


class _TiePlan:
    """Exact ties with identical vectors (see the module docstring): the group arrays the sweep skips
    (``kernels.rank_count``'s ``ties``) and the counts by index that replace them."""

    def __init__(self, image_groups, text_groups, pos: np.ndarray, b_thr: np.ndarray, n_items: int):
        n = len(pos)
        self.igid = group_ids(image_groups, n_items)
        self.tgid = group_ids(text_groups, n)
        # the best positive of each image query: highest score, then the lowest text index
        order = np.lexsort((np.arange(n), -b_thr, pos))
        lead = np.r_[True, pos[order][1:] != pos[order][:-1]]
        best = np.full(n_items, -1, np.int64)
        best[pos[order][lead]] = order[lead]
        tg_best = self.tgid[best]
        self.a_skip = np.where(tg_best >= 0, tg_best, -2)
        ig_pos = self.igid[pos]
        self.b_skip = np.where(ig_pos >= 0, ig_pos, -2)
        self.i2t_extra = np.zeros(n_items, np.int64)  # identical to the best positive, lower index, not positive
        for g in text_groups:
            for u in np.unique(pos[g]):
                if self.tgid[best[u]] >= 0 and best[u] in g:
                    self.i2t_extra[u] = int(((g < best[u]) & (pos[g] != u)).sum())
        rank = np.zeros(n_items, np.int64)  # lower-index images identical to each image
        for g in image_groups:
            rank[g] = np.arange(len(g))
        self.t2i_extra = rank[pos]
        self.any = bool(image_groups or text_groups)

    def ties(self, u0: int, u1: int, j0: int, j1: int):
        if not self.any:
            return None
        return self.igid[u0:u1], self.a_skip[u0:u1], self.tgid[j0:j1], self.b_skip[j0:j1]


def _count_sweep(row_blocks, col_blocks, a_thr: np.ndarray, b_thr: np.ndarray, pos: np.ndarray, device="cpu",
                 plan: _TiePlan | None = None, progress=None):
    """better_u and better_j from one sweep: ``row_blocks`` yields (u0, image rows u0..., scales or None),
    ``col_blocks()`` yields (j0, text rows j0..., scales or None) and is called once per row block; rows times
    scales are unit rows. Tiles run on ``device`` (the kernel dispatch picks Triton on CUDA)."""
    dev = torch.device(device)
    a_thr, b_thr, pos = (torch.from_numpy(v).to(dev) for v in (a_thr, b_thr, pos))
    i2t = torch.zeros(len(a_thr), dtype=torch.long, device=dev)
    t2i = torch.zeros(len(b_thr), dtype=torch.long, device=dev)
    with Bar(len(a_thr), "retrieval rank counts", enabled(progress), unit="queries") as bar:
        _sweep_blocks(row_blocks, col_blocks, a_thr, b_thr, pos, dev, plan, i2t, t2i, bar)
    i2t, t2i = i2t.cpu().numpy(), t2i.cpu().numpy()
    if plan is not None:
        i2t, t2i = i2t + plan.i2t_extra, t2i + plan.t2i_extra
    return i2t, t2i


def _sweep_blocks(row_blocks, col_blocks, a_thr, b_thr, pos, dev, plan, i2t, t2i, bar) -> None:
    for u0, q, qs in row_blocks:
        q = q.to(dev)
        u1 = u0 + len(q)
        for j0, t, ts in col_blocks():
            t = t.to(dev)
            j1 = j0 + len(t)
            ties = None if plan is None else plan.ties(u0, u1, j0, j1)
            if ties is not None:
                ties = tuple(torch.from_numpy(v).to(dev) for v in ties)
            kernels.rank_count(q, t, a_thr[u0:u1], b_thr[j0:j1], pos[j0:j1], u0, i2t[u0:u1], t2i[j0:j1],
                               a_scale=qs, b_scale=ts, ties=ties)
        bar.update(len(q))


def recall_at_k(images: torch.Tensor, texts: torch.Tensor, groups, ks=KS, knn: str = "blocked",
                device="cpu") -> dict:
    """Recall of unit rows held in memory; ``groups[i]`` is row i's item. knn: blocked (rank counts) or faiss."""
    if knn not in ("blocked", "faiss"):
        raise validate.error("knn", f"knn must be blocked or faiss, got {knn!r}")
    first, pos = _items(groups)
    q = images[torch.from_numpy(first)]
    if knn == "faiss":
        return _faiss_recall(q, texts, pos, ks)
    b_thr = (q[torch.from_numpy(pos)].double() * texts.double()).sum(1).numpy()
    a_thr = _image_thresholds(b_thr, pos, len(first))
    plan = _TiePlan(duplicate_groups(q.numpy()), duplicate_groups(texts.numpy()), pos, b_thr, len(first))
    return _recall(*_count_sweep([(0, q, None)], lambda: [(0, texts, None)], a_thr, b_thr, pos, device, plan), ks)


def _faiss_recall(q: torch.Tensor, texts: torch.Tensor, pos: np.ndarray, ks) -> dict:
    try:
        import faiss
    except ImportError:
        raise validate.error("knn", "knn='faiss' needs the faiss package (pip install faiss-cpu)") from None

    def search(queries, gallery, k):
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(np.ascontiguousarray(gallery.float().numpy()))
        return index.search(np.ascontiguousarray(queries.float().numpy()), min(k, len(gallery)))[1]

    kmax = max(ks)
    hit_i2t = pos[search(q, texts, kmax)] == np.arange(len(q))[:, None]
    hit_t2i = search(texts, q, kmax) == pos[:, None]
    return {f"{side}_recall@{k}": float(hit[:, :k].any(1).mean())
            for side, hit in (("i2t", hit_i2t), ("t2i", hit_t2i)) for k in ks}


def recall_at_k_streamed(store, ks=KS, device="cpu", progress=None, executor=None, device_request=None) -> dict:
    """Recall of a paired store read in blocks, memory O(block d + N) whatever N: the thresholds pass as tasks of
    whole blocks (:func:`thresholds_task`), the tie plan here (O(N)), then the count sweep as one task per tile
    (:func:`count_task`: a row block of distinct images x a column block of texts), all on ``executor`` (default:
    in-process, one task at a time with torch on every core); the integer counts of the tiles add up. Where the
    tasks run on a GPU here (``executor.task_device``) and images and texts fit ``resident_budget``, the sweep runs
    here instead with both on the device in their stored precision (float16 on the tensor cores, exact) with
    float32 inverse norms as scales, each call a row block sized to fill the device."""
    from embedx.engine.executor import resolve, row_units

    executor = resolve(executor)
    n, d = store.n_images, store.dim
    first, pos = _items(groups_from_ids(store.ids()))
    item_row = first[pos]                       # the image row of each text's item (never after the text)
    request = str(device) if device_request is None else device_request
    where = executor.task_device(request)
    ref = executor.ref(store)
    step = _rows(store, ROW_BLOCK)
    units = row_units(n, step)
    with Bar(n, "retrieval thresholds", enabled(progress)) as bar:
        parts = list(executor.map(thresholds_task, [(a, b, item_row[a:b]) for a, b in units], ref, bar=bar,
                                  sizes=[b - a for a, b in units], parallel=False,
                                  item_bytes=2 * step * d * store.dtype.itemsize))  # image and text rows
    b_thr, i_hash, t_hash = (np.concatenate(v) for v in zip(*parts))
    a_thr = _image_thresholds(b_thr, pos, len(first))
    plan = _tie_plan(store, first, pos, b_thr, i_hash, t_hash)
    if where is not None and 2 * n * d * store.dtype.itemsize <= resident_budget(where):
        texts, t_scale = _on_device(store.texts(), where)  # rows checked by the thresholds pass above
        images, i_scale = _on_device(store.images(None if len(first) == n else first), where)
        rows = resident_rows(where)
        blocks = ((u0, images[u0:u0 + rows], i_scale[u0:u0 + rows]) for u0 in range(0, len(first), rows))
        return _recall(*_count_sweep(blocks, lambda: [(0, texts, t_scale)], a_thr, b_thr, pos, where, plan,
                                     progress), ks)
    cached = n * d * 4 <= CACHE_BYTES
    col_step = step if cached else store.whole_chunks(COL_BLOCK)
    tiles = [(u0, u1, j0, min(j0 + col_step, n)) for u0, u1 in _distinct_bounds(store, first)
             for j0 in range(0, n, col_step)]
    i2t, t2i = np.zeros(len(first), np.int64), np.zeros(n, np.int64)
    sweep = executor.ref(SweepPlan(first, a_thr, b_thr, pos, plan, step, cached))
    counts = executor.map(count_task, tiles, ref, sweep, request, parallel=False,
                          result_bytes=8 * (ROW_BLOCK + col_step))
    with Bar(len(first), "retrieval rank counts", enabled(progress), unit="queries") as bar:
        for (u0, u1, j0, j1), (rows, cols) in zip(tiles, counts):
            i2t[u0:u1] += rows
            t2i[j0:j1] += cols
            if j1 == n:
                bar.update(u1 - u0)
    return _recall(i2t + plan.i2t_extra, t2i + plan.t2i_extra, ks)


def _threshold_block(store, start: int, block, r: np.ndarray):
    """Rows ``start..`` of the thresholds pass: p*_j = s[pos(j), j] in float64 of the normalized float32 rows
    (``r``: the image row of each text's item), the row hashes of the image and text rows (exact ties), and the
    normalized text rows. An item's image row in an earlier block is read by index."""
    stop = start + len(block)
    x = normalized(block, "images", start)
    t = normalized(store.read_texts(start, stop), "texts", start)
    i_hash, t_hash = row_hashes(x.numpy()), row_hashes(t.numpy())
    q = x[torch.from_numpy(np.maximum(r - start, 0))]
    early = np.flatnonzero(r < start)       # items whose image row lies in an earlier block
    if len(early):
        rows, inv = np.unique(r[early], return_inverse=True)
        q[torch.from_numpy(early)] = normalized(store.images(rows, dtype=np.float32), "images")[
            torch.from_numpy(inv.ravel())]
    return (q.double() * t.double()).sum(1).numpy(), i_hash, t_hash, t


def _tie_plan(store, first, pos, b_thr, i_hash, t_hash) -> _TiePlan:
    """The exact ties from the row hashes (a hash collision is checked against the rows themselves)."""
    return _TiePlan(groups_from_hashes(i_hash[first], lambda idx: normalized(store.images(first[idx])).numpy()),
                    groups_from_hashes(t_hash, lambda idx: normalized(store.text_rows(idx)).numpy()),
                    pos, b_thr, len(first))


# --- the tasks -----------------------------------------------------------------------------------------------
def thresholds_task(item, ref):
    """A task: rows ``a..b`` (one block) of the thresholds pass (``item = (a, b, item_row[a:b])``) ->
    (b_thr, image hashes, text hashes)."""
    from embedx.engine.executor import scratch
    from embedx.rowsource import resolve

    store = resolve(ref)
    a, b, item_row = item
    block = store.read_images_into(a, scratch("retrieval rows", b - a, store.dim, store.dtype))
    return _threshold_block(store, a, block, item_row)[:3]


class SweepPlan:
    """What every count task reads (one copy per worker process on a cluster): the distinct images' rows
    ``first``, the thresholds, the positives ``pos``, the tie plan, the store blocks of ``step`` rows the images are
    normalized in, and whether the normalized texts are cached (``cache``: they fit CACHE_BYTES).

    The process that made the plan keeps, for its own tasks, the unit rows of the last row block of distinct
    images and (``cache``) every column block of texts, so in-process tiles in row-major order read each image row
    once and the texts once, as one sweep would. A copy sent to another process keeps nothing (a cluster worker's
    memory stays what its tile needs) and reads both per tile."""

    def __init__(self, first, a_thr, b_thr, pos, plan: _TiePlan, step: int, cache: bool):
        self.first, self.a_thr, self.b_thr, self.pos, self.plan, self.step = first, a_thr, b_thr, pos, plan, step
        self.cache = cache
        self._kept: dict | None = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_kept"], state["_lock"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def image_rows(self, store, u0: int, u1: int) -> torch.Tensor:
        """Unit rows of the distinct images u0..u1-1 (this process keeps the last row block asked for)."""
        if self._kept is None:
            return _distinct_rows(store, self.first[u0:u1], self.step)
        with self._lock:
            got = self._kept.get(("images", u0, u1))
            if got is None:
                for k in [k for k in self._kept if k[0] == "images"]:
                    del self._kept[k]
                got = self._kept[("images", u0, u1)] = _distinct_rows(store, self.first[u0:u1], self.step)
            return got

    def text_rows(self, store, j0: int, j1: int) -> torch.Tensor:
        """Unit rows of the texts j0..j1-1 (this process keeps them when ``cache``)."""
        if self._kept is None or not self.cache:
            return normalized(store.read_texts(j0, j1), "texts", j0)
        with self._lock:
            got = self._kept.get(("texts", j0, j1))
            if got is None:
                got = self._kept[("texts", j0, j1)] = normalized(store.read_texts(j0, j1), "texts", j0)
            return got


def count_task(tile, ref, sweep: SweepPlan, device_request: str | None):
    """A task: the tile (distinct images u0..u1-1) x (texts j0..j1-1) through ``kernels.rank_count`` ->
    (i2t counts of its rows, t2i counts of its columns), int64. Image rows are normalized per ``step``-row store
    block; on this process's device (``device_request`` resolved here)."""
    from embedx.device import resolve_device
    from embedx.rowsource import resolve

    store = resolve(ref)
    dev = resolve_device(device_request or "auto")
    u0, u1, j0, j1 = tile
    q = sweep.image_rows(store, u0, u1).to(dev)
    t = sweep.text_rows(store, j0, j1).to(dev)
    ties = sweep.plan.ties(u0, u1, j0, j1)
    if ties is not None:
        ties = tuple(torch.from_numpy(v).to(dev) for v in ties)
    i2t, t2i = kernels.rank_count(q, t, *(torch.from_numpy(v).to(dev) for v in (sweep.a_thr[u0:u1],
                                  sweep.b_thr[j0:j1], sweep.pos[j0:j1])), u0, ties=ties)
    return i2t.cpu().numpy(), t2i.cpu().numpy()


def _distinct_bounds(store, first: np.ndarray) -> list[tuple[int, int]]:
    """The (u0, u1) row blocks of the distinct images, from ``first`` alone (nothing read): at least ROW_BLOCK
    distinct images each (but the last), whole store blocks of ``_rows(store, ROW_BLOCK)`` rows."""
    step = _rows(store, ROW_BLOCK)
    counts = np.bincount(first // step, minlength=-(-store.n_images // step))
    out, u0, size = [], 0, 0
    for c in counts:
        size += int(c)
        if size >= ROW_BLOCK:
            out.append((u0, u0 + size))
            u0, size = u0 + size, 0
    if size:
        out.append((u0, u0 + size))
    return out


def _distinct_rows(store, rows: np.ndarray, step: int) -> torch.Tensor:
    """Unit rows of the image rows ``rows`` (sorted), normalized per ``step``-row store block."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    parts = []
    for s in range(lo // step * step, hi, step):
        a, b = max(s, lo), min(s + step, hi)
        keep = rows[(rows >= a) & (rows < b)] - a
        if len(keep):
            raw = store.read_images_into(a, np.empty((b - a, store.dim), store.dtype))
            parts.append(normalized(raw[keep], "images", s))
    return torch.cat(parts)


def _on_device(rows: np.ndarray, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored rows on ``dev`` as they are, with their float32 inverse norms (rows x scales = unit rows)."""
    t = torch.from_numpy(np.ascontiguousarray(rows)).to(dev)
    return t, 1.0 / torch.linalg.vector_norm(t.float(), dim=1)


def _rows(store, target: int) -> int:
    """About ``target`` rows in whole chunks."""
    return store.whole_chunks(target)
