"""The streaming pass: mergeable partial sums over chunks of image rows (one pass, O(N d)).

Every quantity is a sum, so a unit of rows (on any thread, or any worker of a cluster) gives a :class:`Partial`
and partials merge by addition, in the executor's fixed tree (``embedx.engine.executor``);
``embedx.measures.compute`` turns the total into the measures.
With x^ = x/|x|:

  M_c   = sum_{i: y_i = c} x^_i          (per-class sums: acs = sum_c M_c.t_c / n_lab,
                                          iimm_inter = sum_c M_c.(S_t - t_c) / (n_lab (C-1)))
  S_x   = sum_i x^_i                      (iimm_intra = (|S_x|^2 - N) / (N (N-1)), gap)
  cos   = sum_i s_i of the cosine silhouette, when S_x is known up front (the store keeps it): the mean
          cosine distance of x^ to a cluster G is 1 - x^.(sum_G g)/|G|, self excluded
  top-1 / top-5 hits per class: the true class is top-k if fewer than k classes rank before it: those that
          score strictly higher and, among bit-identical class texts, those of lower index (the lowest index
          wins a tie, as argmax); row scaling does not change the ranking

Class stores run :func:`class_pass`: whole Zarr chunks (about 4 MiB, cache-sized) are read straight into a
per-thread buffer and swept by the fused kernel (``kernels.stream_stats``) while hot, one thread per core; the
zero-shot matmul, when asked, runs on the same chunk with every core (or on the GPU, ``PassConfig.device``).
Paired stores run :func:`block_partial` (torch) over aligned image and text blocks.

torch is imported by the paths that use it (zero-shot, the paired pass, :func:`normalized`), not by this module:
a class store's pass without zero-shot runs on numpy (small passes) or numba (``kernels.stream_stats``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedx import validate
from embedx.kernels.ops.stream_stats import NUMBA_MIN_ELEMENTS, stream_stats
from embedx.rows import first_bad_row


SUB_BLOCK = 65536   # paired pass: rows per torch sub-block
SUM_ROWS = 8192     # paired pass: rows per float64 slice of S_x
PAIRED_BLOCK_BYTES = 64 << 20  # paired pass: stored bytes of image rows per block (whole chunks)
TASK_ROWS = 4096    # class pass: rows per read buffer (whole chunks; at least this many)
FLUSH_ROWS = 65536  # class pass: rows per unit (its float32 class sums are added into float64 once per unit)
PAIRED_PARALLEL = False  # paired pass: blocks at once in-process (False: one at a time, torch on every core)


def __getattr__(name):  # the one zero-shot counter, re-exported (loads torch: only when asked for)
    if name in ("ZS_ROWS", "zeroshot_hits", "zs_rows"):
        from embedx import kernels

        return getattr(kernels, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_rows(x, what: str, start: int):
    """Row norms of a float32 block (a torch tensor); rows outside ``embedx.rows`` (NaN/inf, zero, a norm outside
    [NORM_MIN, NORM_MAX]) are input errors (one line, with the row)."""
    import torch

    nrm = torch.linalg.vector_norm(x, dim=1)
    validate.rows(nrm.numpy(), what, start)
    return nrm


def normalized(block, what: str = "rows", start: int = 0):
    """float32 L2-normalized rows of a block (a torch tensor), after :func:`check_rows`."""
    import torch

    x = torch.as_tensor(np.asarray(block)).float()
    return x / check_rows(x, what, start)[:, None]


def normalized_numpy(block, what: str = "rows", start: int = 0) -> np.ndarray:
    """:func:`normalized` in numpy (float32 rows, float32 norms; no torch): the same checks, the same values up to
    the last bit of a norm (the order of the float32 sum of squares)."""
    x = np.asarray(block, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        nrm = np.sqrt(np.einsum("ij,ij->i", x, x)) if x.size else np.zeros(len(x), np.float32)
    validate.rows(nrm, what, start)
    return x / nrm[:, None]


def silhouette_values(own_sum, own_size, other_mean) -> np.ndarray:
    """sklearn's convention: s = (b - a)/max(a, b) with a = own_sum/(own_size - 1); singletons and 0/0 -> 0."""
    own_size = np.asarray(own_size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.maximum(own_sum / (own_size - 1), 0.0)  # mean distances are >= 0: round-off never flips a sign
        b = np.maximum(other_mean, 0.0)
        s = (b - a) / np.maximum(a, b)
    s = np.where(own_size <= 1, 0.0, s)
    return np.nan_to_num(s)


def cosine_silhouette_sum(dot_own, dot_other, own_n: int, other_n: int) -> float:
    """Sum of cosine-silhouette values of unit rows from x^.S_own and x^.S_other (self excluded from own)."""
    own_sum = (own_n - 1) - (np.asarray(dot_own, dtype=np.float64) - 1.0)
    other_mean = 1.0 - np.asarray(dot_other, dtype=np.float64) / other_n
    return float(silhouette_values(own_sum, np.full(len(own_sum), own_n), other_mean).sum())


@dataclass
class Partial:
    """Sums over a set of image rows. ``merge`` is addition; the same result whatever the blocking."""

    n: int = 0
    sum_x: np.ndarray = None            # S_x (float64, d)
    class_sum: np.ndarray = None        # M (float64, C x d); paired stores: None
    class_count: np.ndarray = None      # labelled images per class
    correct_dot: float = 0.0            # paired stores: sum_i x^_i.t^_i
    n_labelled: int = 0
    top1: np.ndarray = None             # per-class hits
    top5: np.ndarray = None
    cos_sum: float = 0.0                # cosine-silhouette sum over these image rows (given S_x up front)

    def merge(self, o: "Partial") -> "Partial":
        def add(a, b):
            return b if a is None else a if b is None else a + b

        return Partial(self.n + o.n, add(self.sum_x, o.sum_x), add(self.class_sum, o.class_sum),
                       add(self.class_count, o.class_count), self.correct_dot + o.correct_dot,
                       self.n_labelled + o.n_labelled, add(self.top1, o.top1), add(self.top5, o.top5),
                       self.cos_sum + o.cos_sum)


def _numpy(a, dtype):
    """A CPU torch tensor or an array as a numpy array of ``dtype`` (None stays None)."""
    if a is None:
        return None
    return np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a, dtype=dtype)


@dataclass
class PassConfig:
    """The pass's inputs. The vectors are numpy (torch tensors given are taken as numpy): the class pass without
    zero-shot never needs torch."""

    texts: np.ndarray | None            # C x d normalized class texts (class stores), float32
    text_sum: np.ndarray                # S_t (float64)
    n_texts: int
    n_images: int
    sum_x_hint: np.ndarray | None       # S_x known up front (store attrs): cosine silhouette in this pass (float64)
    zeroshot: bool
    device: object = None               # torch.device of the zero-shot matmul and counts; None: the CPU
    device_request: str = "auto"        # what was asked ("auto", "cpu", "cuda"): a cluster worker resolves it
    text_groups: tuple = ()             # bit-identical class texts (rows.duplicate_groups): ties by index

    def __post_init__(self):
        self.texts = _numpy(self.texts, np.float32)
        self.text_sum = _numpy(self.text_sum, np.float64)
        self.sum_x_hint = _numpy(self.sum_x_hint, np.float64)

    @property
    def device_type(self) -> str:
        return "cpu" if self.device is None else self.device.type

    def cos_vectors(self, dim: int) -> np.ndarray:
        """The two vectors the sweep dots every normalized row with: S_x (hint) and S_t; zeros if unused."""
        if self.sum_x_hint is None:
            return np.zeros((2, dim), np.float32)
        return np.stack([self.sum_x_hint, self.text_sum]).astype(np.float32)


class ClassWorker:
    """The class-store pass over one unit of rows: a chunk buffer, float32 per-class sums (added into float64 once,
    at the end of the unit), counts, cosine-silhouette and zero-shot sums. ``partial()`` is its :class:`Partial`.
    The buffers (chunk, float32 sums, zero-shot steps) are the thread's own (``engine.executor.thread_local``),
    reused by every unit the thread folds."""

    def __init__(self, cfg: PassConfig, dim: int, dtype, rows: int, impl: str = "numba"):
        from embedx.engine.executor import scratch, thread_local

        c = cfg.n_texts
        self.cfg, self.dim, self.impl = cfg, dim, impl
        self.buf = scratch("class pass rows", rows, dim, dtype)
        self.vs = cfg.cos_vectors(dim)
        self.acc = scratch("class pass sums", c + 1, dim, np.float32)
        self.acc[:] = 0
        self.sums = None                 # float64 (C + 1) x d, from the float32 sums at the end
        self.counts = np.zeros(c, np.int64)
        self.cos = 0.0
        self.n = 0
        self.bad = None  # (global row, reason) of the first bad row this worker met
        self.top1 = self.top5 = self.texts = self.xf = self.hit = None
        self.groups = []
        if cfg.zeroshot:  # torch: the zero-shot matmul (on cfg.device)
            import torch

            from embedx.kernels.ops.zeroshot import zs_rows

            dev = cfg.device if cfg.device is not None else torch.device("cpu")
            self.top1, self.top5 = torch.zeros(c, dtype=torch.long, device=dev), torch.zeros(c, dtype=torch.long,
                                                                                              device=dev)
            self.texts = torch.from_numpy(cfg.texts).to(dev)
            self.groups = [torch.as_tensor(g, dtype=torch.long, device=dev) for g in cfg.text_groups]
            step = min(rows, zs_rows(c))  # fewer rows per step as C grows: rows x C logits stay bounded
            self.xf, self.hit = thread_local("class pass zero-shot", (step, dim, c, str(dev)), lambda: (
                torch.empty(step, dim, device=dev), torch.empty(step, c, device=dev)))

    def add(self, x: np.ndarray, y: np.ndarray, start: int) -> None:
        """Fold rows ``x`` (raw float16/float32, global rows start..) with labels ``y`` into the sums."""
        if self.bad is not None:
            return
        cfg = self.cfg
        norms, dots, _ = stream_stats(x, y, self.vs, cfg.n_texts, self.acc, impl=self.impl)
        bad = first_bad_row(norms)
        if bad is not None:
            self.bad = (start + bad[0], bad[1])
            return
        self.n += len(x)
        keep = y >= 0
        all_labelled = bool(keep.all())
        yl = y if all_labelled else y[keep]
        self.counts += np.bincount(yl, minlength=cfg.n_texts)
        if cfg.sum_x_hint is not None:
            self.cos += cosine_silhouette_sum(dots[:, 0], dots[:, 1], cfg.n_images, cfg.n_texts)
        if cfg.zeroshot and len(yl):
            import torch

            from embedx.kernels import zeroshot_hits

            xl = x if all_labelled else x[keep]
            yt = torch.from_numpy(yl.astype(np.int64)).to(self.texts.device)
            for z0 in range(0, len(xl), len(self.xf)):
                xf = self.xf[: min(len(self.xf), len(xl) - z0)]
                xf.copy_(torch.from_numpy(xl[z0:z0 + len(xf)]))
                zeroshot_hits(xf, yt[z0:z0 + len(xf)], self.texts, self.top1, self.top5, self.hit,
                               step=len(self.xf), groups=self.groups)

    def fold_unit(self, store, u0: int, u1: int, y: np.ndarray, y0: int) -> None:
        """Rows ``u0:u1`` (one unit: whole read buffers) with labels ``y`` (``y[0]`` is row ``y0``)."""
        rows = len(self.buf)
        for s0 in range(u0, u1, rows):
            x = store.read_images_into(s0, self.buf[: min(rows, u1 - s0)])
            self.add(x, y[s0 - y0:s0 - y0 + len(x)], s0)

    def partial(self) -> Partial:
        """The float32 sums of every row added, in float64, with the counts and hits."""
        if self.sums is None:
            self.sums = self.acc.astype(np.float64)
        c = self.cfg.n_texts
        top1, top5 = ((None, None) if self.top1 is None else (self.top1.cpu().numpy(), self.top5.cpu().numpy()))
        return Partial(n=self.n, sum_x=self.sums.sum(0), class_sum=self.sums[:c], class_count=self.counts,
                       n_labelled=int(self.counts.sum()), top1=top1, top5=top5, cos_sum=self.cos)


def chunk_partial(x: np.ndarray, y: np.ndarray, cfg: PassConfig, start: int = 0, impl: str = "numba") -> Partial:
    """The :class:`Partial` of one chunk of raw rows (class stores)."""
    w = ClassWorker(cfg, x.shape[1], x.dtype, 1, impl)
    w.add(np.asarray(x), np.ascontiguousarray(y, dtype=np.int32), start)
    if w.bad is not None:
        raise validate.error("images", f"images row {w.bad[0]} {w.bad[1]}")
    return w.partial()


def pass_units(store) -> tuple[int, int]:
    """(rows per read buffer: whole chunks, at least TASK_ROWS; rows per unit: whole buffers, about FLUSH_ROWS).
    A unit is the class pass's item: its unit of work and of float32 accumulation."""
    rows = store.chunk_rows * max(1, TASK_ROWS // store.chunk_rows)
    return rows, rows * max(1, FLUSH_ROWS // rows)


def class_pass(store, cfg: PassConfig, threads: int | None = None, impl: str | None = None, executor=None,
               bar=None) -> Partial:
    """Sweep a class store unit by unit (:func:`pass_units`): the ``executor`` (``embedx.engine.executor``; default:
    threaded in-process, ``threads`` threads) runs :func:`class_unit_partial` on every unit and merges the
    partials in its fixed tree. A task reads whole chunks into its thread's buffer (``store.read_images_into``,
    no allocation) and folds them in while they are in cache. Without zero-shot the (GIL-free) kernel runs one
    task per core; with zero-shot on the CPU (``cfg.device``) one task at a time, and the matmul takes every
    core (unless ``threads`` is given); with the zero-shot matmul on a GPU every task sends its chunks there.
    ``impl`` (default by size): the numba kernel, or numpy for passes too small to pay numba's start-up.
    ``bar``: a progress counter (``embedx.engine.progress.Bar``)."""
    from embedx.engine.executor import ThreadedExecutor, row_units

    n, d = store.n_images, store.dim
    rows, unit = pass_units(store)
    if impl is None:
        impl = "numba" if n * d >= NUMBA_MIN_ELEMENTS else "numpy"
    if impl != "numba":  # a small pass: at least one unit per core (whole buffers), so every core sweeps
        import os

        per_core = -(-n // max(1, threads or os.cpu_count() or 1))
        unit = min(unit, max(rows, -(-per_core // rows) * rows))
    if n == 0:
        return ClassWorker(cfg, d, store.dtype, rows, impl).partial()
    executor = executor if executor is not None else ThreadedExecutor(threads)
    units = row_units(n, unit)
    parallel = threads is not None or not (cfg.zeroshot and cfg.device_type == "cpu")
    return executor.map_reduce(class_unit_partial, units, Partial.merge, executor.ref(store), cfg, impl, rows,
                               bar=bar, sizes=[b - a for a, b in units], parallel=parallel,
                               item_bytes=unit * d * store.dtype.itemsize)


def class_unit_partial(rng: tuple[int, int], ref, cfg: PassConfig, impl: str, rows: int) -> Partial:
    """A task: the :class:`Partial` of image rows ``rng`` (one unit, read ``rows`` at a time) of the store ``ref``
    (``embedx.rowsource.resolve``); the zero-shot device is this process's (``cfg.device_request``)."""
    from embedx.device import worker_device
    from embedx.rowsource import resolve

    store = resolve(ref)
    start, stop = rng
    cfg = worker_device(cfg) if cfg.zeroshot else cfg  # the device runs the zero-shot matmul only
    y = store.labels(start, stop)
    validate.label_range(y, cfg.n_texts)
    w = ClassWorker(cfg, store.dim, store.dtype, rows, impl)
    w.fold_unit(store, start, stop, y, start)
    if w.bad is not None:
        raise validate.error("images", f"images row {w.bad[0]} {w.bad[1]}")
    return w.partial()


def block_partial(block, cfg: PassConfig, t_block, start: int = 0, sub_rows: int = SUB_BLOCK) -> Partial:
    """Paired stores: partial sums of one block of raw image rows and their normalized paired text rows
    ``t_block`` (S_x, sum_i x^_i.t^_i, cosine-silhouette sum). Dots in float32, sums in float64 (S_x in
    float64 slices, so the result does not depend on the BLAS thread count)."""
    import torch

    block = np.asarray(block)
    n = len(block)
    p = Partial(n=n, n_labelled=n)
    buf = torch.empty(min(sub_rows, n), block.shape[1])
    sum_x = torch.zeros(block.shape[1], dtype=torch.float64)
    cos_w = None if cfg.sum_x_hint is None else torch.from_numpy(cfg.cos_vectors(block.shape[1]))
    correct = 0.0
    for s0 in range(0, n, sub_rows):
        x = buf[: min(sub_rows, n - s0)]
        x.copy_(torch.from_numpy(block[s0:s0 + len(x)]))
        inv = 1.0 / check_rows(x, "images", start + s0)
        for r0 in range(0, len(x), SUM_ROWS):  # float64: a float32 gemv sums in an order set by the thread count
            sum_x += inv[r0:r0 + SUM_ROWS].double() @ x[r0:r0 + SUM_ROWS].double()
        correct += float(((x * t_block[s0:s0 + len(x)]).sum(1) * inv).double().sum())
        if cos_w is not None:
            w2 = torch.nn.functional.linear(x, cos_w) * inv[:, None]
            p.cos_sum += cosine_silhouette_sum(w2[:, 0].double().numpy(), w2[:, 1].double().numpy(), cfg.n_images,
                                               cfg.n_texts)
    p.sum_x, p.correct_dot = sum_x.numpy(), correct
    return p


def paired_block_partial(rng: tuple[int, int], ref, cfg: PassConfig):
    """A task (paired stores): image rows ``rng`` (one block) of the source ``ref`` and their paired texts ->
    (Partial, texts' cosine-silhouette sum, S_t of the paired texts)."""
    import torch

    from embedx.engine.executor import scratch
    from embedx.rowsource import resolve

    src = resolve(ref)
    start, stop = rng
    x = src.read_images_into(start, scratch("paired pass rows", stop - start, src.dim, src.dtype))
    tb = normalized(src.read_texts(start, stop), "texts", start)
    st = tb.double().sum(0).numpy()
    text_cos = 0.0
    if cfg.sum_x_hint is not None:
        w = tb.double() @ torch.from_numpy(np.stack([cfg.text_sum, cfg.sum_x_hint], 1))
        text_cos = cosine_silhouette_sum(w[:, 0].numpy(), w[:, 1].numpy(), cfg.n_texts, cfg.n_images)
    return block_partial(x, cfg, tb, start), text_cos, st


def merge_paired(a, b):
    """Merge two :func:`paired_block_partial` results."""
    return a[0].merge(b[0]), a[1] + b[1], a[2] + b[2]


def paired_pass(src, cfg: PassConfig, executor=None, bar=None):
    """The paired pass over every image row: (Partial, texts' cosine sum, S_t), the ``executor``'s merge tree
    (default: in-process) of :func:`paired_block_partial` over blocks of about PAIRED_BLOCK_BYTES (whole chunks);
    each block's torch work takes every core, so in-process the blocks run one at a time."""
    from embedx.engine.executor import resolve, row_units

    executor = resolve(executor)
    block = src.block_rows(PAIRED_BLOCK_BYTES)
    units = row_units(src.n_images, block)
    if not units:
        return None
    return executor.map_reduce(paired_block_partial, units, merge_paired, executor.ref(src), cfg, bar=bar,
                               sizes=[b - a for a, b in units], parallel=PAIRED_PARALLEL,
                               item_bytes=block * src.dim * np.dtype(src.dtype).itemsize)
