"""The authors' IIMM (mit-ll/IIMM ``metrics.py``), in float64: the reference embedx's streamed IIMM is held to.

Paper B computes both terms over one set of labelled images: S_inter, each image's mean similarity to the
texts of the other classes, and S_intra, the mean similarity over every pair of those images (blocked here,
as the authors' code, so it runs on tens of thousands of images). IIMM is their mean.
"""
from __future__ import annotations

import numpy as np


def authors_iimm(images, texts, labels, block: int = 10_000) -> float:
    """IIMM = mean(S_inter, S_intra) of labelled ``images`` [N, d] with class ``texts`` [C, d], O(N^2) float64."""
    from sklearn.preprocessing import normalize

    images, texts = normalize(np.asarray(images, np.float64)), normalize(np.asarray(texts, np.float64))
    labels = np.asarray(labels)
    a = texts @ images.T
    a[labels, np.arange(len(labels))] = np.nan
    inter = np.nanmean(a, axis=0).mean()
    n = len(images)
    total = 0.0
    for i in range(0, n, block):
        bi = images[i:i + block]
        g = bi @ bi.T
        total += g[np.tril_indices(len(bi), -1)].sum()
        for j in range(0, i, block):
            total += (bi @ images[j:j + block].T).sum()
    intra = total / (n * (n - 1) / 2)
    return float(np.mean([inter, intra]))
