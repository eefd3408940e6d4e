"""The streaming pass: mergeable partial sums over blocks of image rows (one pass, O(N d)).

Every quantity is a sum, so a block (or a Zarr chunk, on any worker) gives a :class:`Partial` and partials
merge by addition; ``embedx.measures.compute`` turns the total into the measures. With x^ = x/|x|:

  M_c   = sum_{i: y_i = c} x^_i          (per-class sums: acs = sum_c M_c.t_c / n_lab,
                                          iimm_inter = sum_c M_c.(S_t - t_c) / (n_lab (C-1)))
  S_x   = sum_i x^_i                      (iimm_intra = (|S_x|^2 - N) / (N (N-1)), gap)
  cos   = sum_i s_i of the cosine silhouette, when S_x is known up front (the store keeps it): the mean
          cosine distance of x^ to a cluster G is 1 - x^.(sum_G g)/|G|, self excluded
  top-1 / top-5 hits per class: the true class is top-k if fewer than k classes score strictly higher
          (row scaling does not change the ranking; exact ties count in the image's favour)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from embedx import kernels
from embedx.errors import EmbedxError


SUB_BLOCK = 65536  # rows per sub-block (128 MiB of float32 at d = 512): few, large torch calls measured fastest
ZS_ROWS = 4096     # zero-shot logits per step: 4096 x C stays in cache (measured best of 2048/4096/8192)


def check_rows(x: torch.Tensor, what: str, start: int) -> torch.Tensor:
    """Row norms of a float32 block; NaN/inf and zero rows are input errors (one line, with the row).
    A non-finite element makes its row norm non-finite (float16/32 inputs cannot overflow the square)."""
    nrm = torch.linalg.vector_norm(x, dim=1)
    _check_norms(nrm.numpy(), what, start)
    return nrm


def _check_norms(norms: np.ndarray, what: str, start: int) -> None:
    bad = ~np.isfinite(norms)
    if bad.any():
        raise EmbedxError(f"{what} row {int(np.flatnonzero(bad)[0]) + start} contains NaN or inf")
    if (norms == 0).any():
        raise EmbedxError(f"{what} row {int(np.flatnonzero(norms == 0)[0]) + start} is all zeros (it has no direction)")


def normalized(block, what: str = "rows", start: int = 0) -> torch.Tensor:
    """float32 L2-normalized rows of a block, after :func:`check_rows`."""
    x = torch.as_tensor(np.asarray(block)).float()
    return x / check_rows(x, what, start)[:, None]


def silhouette_values(own_sum, own_size, other_mean) -> np.ndarray:
    """sklearn's convention: s = (b - a)/max(a, b) with a = own_sum/(own_size - 1); singletons and 0/0 -> 0."""
    own_size = np.asarray(own_size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = own_sum / (own_size - 1)
        s = (other_mean - a) / np.maximum(a, other_mean)
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


@dataclass
class PassConfig:
    texts: torch.Tensor | None          # C x d normalized class texts (class stores)
    text_sum: torch.Tensor              # S_t (float64)
    n_texts: int
    n_images: int
    sum_x_hint: torch.Tensor | None     # S_x known up front (store attrs): cosine silhouette in this pass
    zeroshot: bool
    sums: bool = True                   # the O(N d) sums (acs, iimm, gap, ...); off when only zero-shot is asked
    fused: bool = True                  # class stores: the fused numba sweep (kernels.stream_stats) when available

    def __post_init__(self):
        self.texts_t = None if self.texts is None else self.texts.T.contiguous()
        self._buf = None

    def buffer(self, rows: int, dim: int) -> torch.Tensor:
        """A float32 work buffer reused across blocks (no page faults)."""
        if self._buf is None or self._buf.shape[0] < rows or self._buf.shape[1] != dim:
            self._buf = torch.empty(rows, dim)
        return self._buf


def _class_block_fused(block: np.ndarray, y: np.ndarray, cfg: PassConfig, start: int) -> Partial | None:
    """Class stores: norms, cosine-silhouette dots and per-class sums in one fused sweep (numba kernel)."""
    c = cfg.n_texts
    vs = (np.stack([cfg.sum_x_hint.numpy(), cfg.text_sum.numpy()]) if cfg.sum_x_hint is not None
          else np.zeros((0, block.shape[1])))
    out = kernels.stream_stats_numba(block, y, vs, c)
    if out is None:
        return None
    norms, dots, sums = out
    _check_norms(norms, "images", start)
    p = Partial(n=len(block))
    lab = np.asarray(y)
    p.class_count = np.bincount(lab[lab >= 0], minlength=c).astype(np.int64)
    p.n_labelled = int(p.class_count.sum())
    p.class_sum = sums[:c]
    p.sum_x = sums.sum(0)
    if cfg.sum_x_hint is not None:
        p.cos_sum = cosine_silhouette_sum(dots[:, 0].astype(np.float64), dots[:, 1].astype(np.float64),
                                          cfg.n_images, cfg.n_texts)
    if cfg.zeroshot:
        _zeroshot(p, block, lab, cfg)
    return p


def _zeroshot_hits(x: torch.Tensor, y: torch.Tensor, cfg: PassConfig, top1: np.ndarray, top5: np.ndarray) -> None:
    """Add the top-1/top-5 hits of float32 rows ``x`` with labels ``y`` (all >= 0) per class: the true class is
    top-k if fewer than k classes score strictly higher (row scaling does not change the ranking)."""
    c = cfg.n_texts
    for z0 in range(0, len(x), ZS_ROWS):  # cache-sized: matmul-bound, logits stay small
        yz = y[z0:z0 + ZS_ROWS]
        logits = x[z0:z0 + ZS_ROWS] @ cfg.texts_t
        better = (logits > logits.gather(1, yz[:, None])).sum(1)
        top1 += np.bincount(yz[better == 0].numpy(), minlength=c)
        top5 += np.bincount(yz[better < 5].numpy(), minlength=c)


def _zeroshot(p: Partial, block: np.ndarray, lab: np.ndarray, cfg: PassConfig) -> None:
    """Zero-shot hits of a raw block (fused path): labelled rows upcast ZS_ROWS at a time into the buffer."""
    c = cfg.n_texts
    p.top1, p.top5 = np.zeros(c, np.int64), np.zeros(c, np.int64)
    keep = np.flatnonzero(lab >= 0)
    buf = cfg.buffer(min(ZS_ROWS, max(len(keep), 1)), block.shape[1])
    for z0 in range(0, len(keep), ZS_ROWS):
        idx = keep[z0:z0 + ZS_ROWS]
        xl = buf[: len(idx)]
        xl.copy_(torch.from_numpy(block[idx] if len(idx) < len(block) else block))
        _zeroshot_hits(xl, torch.from_numpy(lab[idx].astype(np.int64)), cfg, p.top1, p.top5)


def block_partial(block, y: np.ndarray, cfg: PassConfig, start: int = 0,
                  t_block: torch.Tensor | None = None, sub_rows: int = SUB_BLOCK) -> Partial:
    """Partial sums of one block of raw rows (any float dtype; ``y`` its labels; ``t_block`` the normalized
    paired text rows of paired stores). Works through sub-blocks: each is upcast once into a
    reused float32 buffer (no page faults); per-block sums accumulate in float32, across blocks in float64."""
    block = np.asarray(block)
    if t_block is None and cfg.sums and cfg.fused:
        p = _class_block_fused(block, y, cfg, start)
        if p is not None:
            return p
    n = len(block)
    p = Partial(n=n)
    lab_all = torch.as_tensor(np.asarray(y), dtype=torch.long)
    c = cfg.n_texts
    classes = t_block is None
    buf = cfg.buffer(min(sub_rows, n), block.shape[1])
    sum_x = torch.zeros(block.shape[1], dtype=torch.float32)
    class_sum = torch.zeros(c, block.shape[1]) if classes and cfg.sums else None
    counts = np.zeros(c, np.int64) if classes else None
    top1 = np.zeros(c, np.int64) if classes and cfg.zeroshot else None
    top5 = np.zeros(c, np.int64) if classes and cfg.zeroshot else None
    cos_w = None if cfg.sum_x_hint is None else torch.stack([cfg.sum_x_hint.float(), cfg.text_sum.float()])
    correct = 0.0
    for s0 in range(0, n, sub_rows):
        x = buf[: min(sub_rows, n - s0)]
        x.copy_(torch.from_numpy(block[s0:s0 + len(x)]))
        inv = 1.0 / check_rows(x, "images", start + s0)
        if classes:
            lab = lab_all[s0:s0 + len(x)]
            m = lab >= 0
            all_labelled = bool(m.all())
            rows = torch.arange(len(x)) if all_labelled else m.nonzero()[:, 0]
            yl = lab if all_labelled else lab[rows]
            cnt = np.bincount(yl.numpy(), minlength=c)
            counts += cnt
            if cfg.sums:
                # rows grouped by class: a CSR matrix (numpy's stable sort of int16 keys is a radix sort)
                key = yl.numpy().astype(np.int16 if c < 32768 else np.int64)
                order = torch.from_numpy(np.argsort(key, kind="stable"))
                crow = torch.zeros(c + 1, dtype=torch.long)
                crow[1:] = torch.cumsum(torch.from_numpy(cnt), 0)
                with warnings.catch_warnings():  # CSR is "beta" in torch; the matrix is valid by construction
                    warnings.simplefilter("ignore", UserWarning)
                    w = torch.sparse_csr_tensor(crow, rows[order], inv[rows[order]], (c, len(x)),
                                                check_invariants=False)
                class_sum += w @ x
                if not all_labelled:
                    sum_x += (inv * ~m) @ x
            if cfg.zeroshot and len(rows):
                _zeroshot_hits(x if all_labelled else x[rows], yl, cfg, top1, top5)
        else:
            sum_x += inv @ x
            correct += float(((x * t_block[s0:s0 + len(x)]).sum(1) * inv).double().sum())
        if cos_w is not None:
            w2 = torch.nn.functional.linear(x, cos_w) * inv[:, None]
            p.cos_sum += cosine_silhouette_sum(w2[:, 0].double().numpy(), w2[:, 1].double().numpy(), cfg.n_images,
                                               cfg.n_texts)
    if classes:
        p.class_count, p.n_labelled, p.top1, p.top5 = counts, int(counts.sum()), top1, top5
        if class_sum is not None:
            p.class_sum = class_sum.double().numpy()
            p.sum_x = p.class_sum.sum(0) + sum_x.double().numpy()
    else:
        p.sum_x, p.correct_dot, p.n_labelled = sum_x.double().numpy(), correct, n
    return p
