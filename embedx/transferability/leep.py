"""LEEP (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations", ICML 2020)
and NCE (Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019), with the
zero-shot classifier as the source model::

    theta(x_i) = softmax_z(logit_scale x^_i . t^_z)  over all C class prompts (x^, t^ unit rows)
    LEEP: P(y, z) = (1/N) sum_i theta(x_i)_z [y_i = y],  P(y | z) = P(y, z) / P(z),
          leep = (1/N) sum_i ln sum_z P(y_i | z) theta(x_i)_z                       (two passes)
    NCE:  z_i = argmax_z theta(x_i) (ties: the lowest index), P(y, z) the empirical joint of (y_i, z_i),
          nce = sum_{y,z} P(y, z) ln P(y | z) = -H(Y | Z)   (terms with P(y, z) = 0 are 0; one pass)

logit_scale defaults to 100, CLIP's trained value.
"""
from __future__ import annotations

import numpy as np

from embedx.transferability.moments import Block, Mergeable
from embedx.transferability.sfda import softmax

LOGIT_SCALE = 100.0
THETA_ELEMENTS = 1 << 22  # rows x C zero-shot probabilities computed at once at most (32 MiB of float64)


def theta_rows(c: int) -> int:
    """Rows whose C zero-shot probabilities are computed at once: a whole block unless C is large."""
    return max(1, THETA_ELEMENTS // max(1, int(c)))


def _parts(b: Block, c: int):
    """``b`` whole, or (when its rows x C probabilities would exceed THETA_ELEMENTS) in consecutive row slices, each
    a :class:`Block` (still sorted by label)."""
    step = theta_rows(c)
    if len(b) <= step:
        yield b
        return
    for r0 in range(0, len(b), step):
        yield Block(b.start + r0, b.x[r0:r0 + step], b.y[r0:r0 + step])


class ZeroShot(Mergeable):
    """Pass 1: the soft joint sum_i theta(x_i)_z [y_i = y] and the hard joint counts of (y_i, argmax theta)."""

    ADDITIVE = ("soft", "hard")

    def __init__(self, texts_unit: np.ndarray, n_labels: int, logit_scale: float, soft: bool, hard: bool):
        self.t, self.scale = texts_unit, float(logit_scale)
        c = len(texts_unit)
        self.soft = np.zeros((n_labels, c)) if soft else None
        self.hard = np.zeros(n_labels * c, dtype=np.int64) if hard else None
        self.seconds = 0.0

    def theta(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.scale * (x @ self.t.T))

    def update(self, b: Block) -> None:
        for p in _parts(b, len(self.t)):
            th = self.theta(p.x)
            if self.soft is not None:
                self.soft[p.labels] += p.class_sums(th)
            if self.hard is not None:
                c = th.shape[1]
                self.hard += np.bincount(p.y * c + np.argmax(th, axis=1), minlength=len(self.hard))


def nce(zs: ZeroShot) -> float:
    joint = zs.hard.reshape(-1, len(zs.t)).astype(np.float64)
    joint /= joint.sum()
    pz = joint.sum(axis=0)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / np.where(pz > 0, pz, 1.0))[nz])))


class LeepLikelihood(Mergeable):
    """Pass 2: sum_i ln sum_z P(y_i | z) theta(x_i)_z."""

    ADDITIVE = ("total",)

    def __init__(self, zs: ZeroShot):
        joint = zs.soft / zs.soft.sum()
        pz = joint.sum(axis=0)
        self.cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
        self.zs = zs
        self.total = 0.0
        self.seconds = 0.0

    def update(self, b: Block) -> None:
        for p in _parts(b, len(self.zs.t)):
            th = self.zs.theta(p.x)
            self.total += float(np.log(np.einsum("iz,iz->i", th, self.cond[p.y])).sum())
