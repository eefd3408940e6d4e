"""What exactness on close points costs: the exact Euclidean silhouette with the current fused kernel (tiles centred
on their column block, near pairs recomputed as sum (x - y)^2) against the plain float32 expansion
|x|^2 + |y|^2 - 2 x.y it replaced, side by side in one run (alternating, median of REPEATS), on

  speed:    benchmark (b)'s store: 20,000 images + 100 texts, d = 512, float16 (spread data);
  accuracy: tight data (median pairwise distance ~2e-3) and near-duplicate triples 1e-4 apart, against
            sklearn's float64 silhouette_score.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save  # noqa: E402

from embedx import kernels  # noqa: E402
from embedx.kernels.ops import cluster_distance as cd  # noqa: E402

REPEATS = 5


def plain_expansion(x, y, labels, n_clusters, row_ids=None, col_offset=0, block=2048, x_scale=None, y_scale=None):
    """The kernel before: float32 |x|^2 + |y|^2 - 2 x.y, no centring, no recompute (the baseline)."""
    x = cd._scaled(x.float(), x_scale, torch.float32)
    labels = labels.to(device=y.device, dtype=torch.long)
    xsq = (x * x).sum(1, keepdim=True)
    out = torch.zeros(len(x), n_clusters, dtype=torch.float64)
    for c0 in range(0, len(y), block):
        yc = cd._scaled(y[c0:c0 + block].float(), None if y_scale is None else y_scale[c0:c0 + block], torch.float32)
        d = torch.addmm(xsq + (yc * yc).sum(1)[None, :], x, yc.T, alpha=-2.0).clamp_(min=0).sqrt_()
        if row_ids is not None:
            j = row_ids - (col_offset + c0)
            i = ((j >= 0) & (j < len(yc))).nonzero()[:, 0]
            d[i, j[i]] = 0.0
        oh = torch.nn.functional.one_hot(labels[c0:c0 + block], n_clusters).to(d.dtype)
        out += (d @ oh).double()
    return out


def _with(impl, fn):
    old = kernels.cluster_distance_sums_torch
    kernels.cluster_distance_sums_torch = impl
    try:
        return fn()
    finally:
        kernels.cluster_distance_sums_torch = old


def _store(path, x, t, y):
    from embedx.formats.arrays import import_arrays

    d = os.path.dirname(path)
    for k, arr in (("x", x), ("t", t), ("y", y)):
        np.save(os.path.join(d, f"{k}.npy"), arr)
    import_arrays(path, images=f"{d}/x.npy", texts=f"{d}/t.npy", labels=f"{d}/y.npy", dtype="float32", overwrite=True)
    from embedx.store import Store

    return Store(path)


def main(argv=None) -> dict:
    from sklearn.metrics import silhouette_score

    from embedx.measures import compute
    from embedx.store import Store
    from bench_measures import WORK, make_class_store

    os.makedirs(WORK, exist_ok=True)
    s = Store(make_class_store(os.path.join(WORK, "iimm-20000.zarr"), 20_000, 100, 512))
    times = {"current": [], "plain": []}
    vals = {}
    for _ in range(REPEATS):
        for name, impl in (("current", cd.cluster_distance_sums_torch), ("plain", plain_expansion)):
            t = time.perf_counter()
            vals[name] = _with(impl, lambda: compute(s, ["silhouette_euclidean"], device="cpu"))["silhouette_euclidean"]
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"speed": {"n": 20_100, "d": 512, "seconds": times, "median_s": med,
                     "cost": med["current"] / med["plain"] - 1, "values": vals}}

    # concentrated data, as CLIP's: each modality a narrow cone (|mean of unit rows|^2 ~ 0.6): blocks get centred
    rng = np.random.default_rng(1)
    cone = []
    for n in (20_000, 100):
        u = rng.standard_normal(512)
        v = 0.8 * u / np.linalg.norm(u) + 0.6 * rng.standard_normal((n, 512)) / np.sqrt(512)
        cone.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    os.makedirs(os.path.join(WORK, "cones"), exist_ok=True)
    cs = _store(os.path.join(WORK, "cones", "s.zarr"), cone[0].astype(np.float16), cone[1].astype(np.float16),
                rng.integers(0, 100, 20_000))
    ctimes = {"current": [], "plain": []}
    for _ in range(REPEATS):
        for name, impl in (("current", cd.cluster_distance_sums_torch), ("plain", plain_expansion)):
            t = time.perf_counter()
            _with(impl, lambda: compute(cs, ["silhouette_euclidean"], device="cpu"))
            ctimes[name].append(time.perf_counter() - t)
    cmed = {k: statistics.median(v) for k, v in ctimes.items()}
    res["speed_concentrated"] = {"seconds": ctimes, "median_s": cmed, "cost": cmed["current"] / cmed["plain"] - 1}

    rng = np.random.default_rng(0)
    acc = {}
    with tempfile.TemporaryDirectory() as tmp:
        d, c = 32, 4
        base = rng.standard_normal((130, d))
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        cases = {
            "tight (median distance ~2e-3)": (rng.standard_normal(d) + 1e-3 * rng.standard_normal((400, d)) / d ** 0.5,
                                              rng.standard_normal(d) + 1e-3 * rng.standard_normal((c, d)) / d ** 0.5,
                                              rng.integers(0, c, 400)),
            "near-duplicate triples 1e-4 apart": (np.repeat(base, 3, 0) + 1e-4 * rng.standard_normal((390, d)) / d ** 0.5,
                                                  rng.standard_normal((c, d)), np.repeat(rng.integers(0, c, 130), 3)),
        }
        for k, (x, t, y) in cases.items():
            st = _store(os.path.join(tmp, "s.zarr"), x, t, y)
            xn = st.images().astype(np.float64)
            xn /= np.linalg.norm(xn, axis=1, keepdims=True)
            tn = st.texts().astype(np.float64)
            tn /= np.linalg.norm(tn, axis=1, keepdims=True)
            ref = {"modality": silhouette_score(np.vstack([xn, tn]), [1] * len(xn) + [0] * len(tn)),
                   "class": silhouette_score(xn, y)}
            row = {}
            for name, impl in (("current", cd.cluster_distance_sums_torch), ("plain", plain_expansion)):
                got = _with(impl, lambda: compute(st, ["silhouette_euclidean"], silhouette_labels="class"))
                row[name] = {"modality": abs(got["silhouette_euclidean"] - ref["modality"]),
                             "class": abs(got["silhouette_class_euclidean"] - ref["class"])}
            acc[k] = row
    res["accuracy_abs_error"] = acc
    res["pass"] = all(v["current"][m] <= 1e-5 for v in acc.values() for m in ("modality", "class"))
    md = [f"| exact silhouette, 20,100 x 512 (benchmark (b)'s store) | {med['current']:.2f} s | {med['plain']:.2f} s | "
          f"{res['speed']['cost']:+.1%} |",
          f"| the same on concentrated cones (CLIP-like, blocks centred) | {cmed['current']:.2f} s | "
          f"{cmed['plain']:.2f} s | {res['speed_concentrated']['cost']:+.1%} |",
          "", "| data | error, current kernel (modality / class) | error, plain expansion | target |",
          "|---|---|---|---|"]
    for k, v in acc.items():
        md.append(f"| {k} | {v['current']['modality']:.1e} / {v['current']['class']:.1e} | "
                  f"{v['plain']['modality']:.1e} / {v['plain']['class']:.1e} | <= 1e-5 |")
    table = ("| run | current kernel | plain float32 expansion | cost |\n|---|---|---|---|\n" + "\n".join(md) +
             f"\n\nMedian of {REPEATS} alternating runs, torch CPU path, {torch.get_num_threads()} threads. Errors are "
             "|embedx - sklearn float64 silhouette_score| on the stored values.")
    save("precision", res, table)
    return res


if __name__ == "__main__":
    main()
