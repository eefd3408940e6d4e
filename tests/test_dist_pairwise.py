"""The pairwise measures on a Dask cluster of 2 worker processes: the exact Euclidean silhouette (by modality and
by class) as block-pair tasks equals the in-process one (the same tasks: the same bits) and scikit-learn's (1e-6);
retrieval rank counts as tile tasks give recall identical to the in-process counts and to a float64 brute force,
with several captions per image and exact ties (duplicate captions, duplicate images). Block sizes are patched on
the driver, so every store splits into many block pairs / tiles (tasks receive their sizes as arguments)."""
import numpy as np
import pytest
from sklearn.metrics import silhouette_score

import embedx
from embedx.measures import compute, retrieval, silhouette
from tests.test_measures import _grouped_recall_brute_force, _paired_store_with_ids

CLASS = "silhouette_class_euclidean"
RECALL = [f"{s}_recall@{k}" for s in ("i2t", "t2i") for k in (1, 5, 10)]


def _unit64(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture
def small_pairs(monkeypatch):
    """Row blocks of 128 points (2 chunks of 64): a store of ~1000 points makes ~36 block pairs."""
    from embedx.engine import dask

    monkeypatch.setattr(silhouette, "PAIR_ROWS", 128)
    monkeypatch.setattr(dask, "WAVE_PER_WORKER", 1)  # a window of 2 tasks: results consumed in order as they come


def test_modality_silhouette_on_cluster(tmp_path, rng, dask_executor, small_pairs):
    n, d = 450, 12
    x = rng.normal(size=(n, d)).astype(np.float32)
    t = (x + 1.5 * rng.normal(size=(n, d)) + 0.8).astype(np.float32)
    embedx.import_arrays(str(tmp_path / "p.zarr"), x, t, chunk_rows=64)
    store = embedx.open(str(tmp_path / "p.zarr"))
    local = compute(store, ["silhouette_euclidean"])
    dist = compute(store, ["silhouette_euclidean"], executor=dask_executor)
    assert dist["silhouette_euclidean"] == local["silhouette_euclidean"]
    pts = np.vstack([_unit64(store.images()), _unit64(store.texts())])  # the stored (float16) rows, normalized
    ref = silhouette_score(pts, np.r_[np.ones(n), np.zeros(n)])
    assert dist["silhouette_euclidean"] == pytest.approx(ref, abs=1e-6)


def test_class_silhouette_on_cluster(tmp_path, rng, dask_executor, small_pairs):
    """Unlabelled rows (y = -1) are left out: the class blocks span uneven store-row ranges; one class is a
    singleton and the class ids are not dense (class 2 has no image)."""
    n, d, c = 700, 10, 6
    centres = 2.0 * rng.normal(size=(c, d))
    y = rng.choice([-1, 0, 1, 3, 4, 5], n)
    y[y == 5] = 4
    y[rng.integers(n)] = 5  # a singleton class
    x = (centres[np.maximum(y, 0)] + rng.normal(size=(n, d))).astype(np.float32)
    t = rng.normal(size=(c, d)).astype(np.float32)
    embedx.import_arrays(str(tmp_path / "c.zarr"), x, t, y, chunk_rows=64)
    store = embedx.open(str(tmp_path / "c.zarr"))
    names = ["silhouette_euclidean"]
    local = compute(store, names, silhouette_labels="class")
    dist = compute(store, names, silhouette_labels="class", executor=dask_executor)
    for k in (CLASS, "silhouette_euclidean"):
        assert dist[k] == local[k], k
    keep = y >= 0
    ref = silhouette_score(_unit64(store.images()[keep]), y[keep])
    assert dist[CLASS] == pytest.approx(ref, abs=1e-6)


def test_silhouette_task_errors_name_the_row(tmp_path, rng, dask_executor, small_pairs):
    """A zero image row is the same one-line input error on the cluster as in-process."""
    from tests.conftest import write_behind_embedx
    from embedx.errors import EmbedxError

    n, d = 300, 8
    x = rng.normal(size=(n, d)).astype(np.float32)
    embedx.import_arrays(str(tmp_path / "p.zarr"), x, x + 1, chunk_rows=64)
    write_behind_embedx(tmp_path / "p.zarr", "images/embeddings", 200, np.zeros(d, np.float16))
    store = embedx.open(str(tmp_path / "p.zarr"))
    with pytest.raises(EmbedxError) as local:
        compute(store, ["silhouette_euclidean"])
    with pytest.raises(EmbedxError) as dist:
        compute(store, ["silhouette_euclidean"], executor=dask_executor)
    assert str(dist.value) == str(local.value) and "images row 200" in str(dist.value)


@pytest.mark.parametrize("cached", [True, False])
def test_retrieval_on_cluster_with_ties(tmp_path, rng, monkeypatch, dask_executor, cached):
    """Several captions per image (ids), duplicate captions and a duplicate image: exact ties ranked by index."""
    monkeypatch.setattr(retrieval, "ROW_BLOCK", 40)
    monkeypatch.setattr(retrieval, "COL_BLOCK", 64)
    if not cached:  # texts in COL_BLOCK column blocks, as when they are too big to keep
        monkeypatch.setattr(retrieval, "CACHE_BYTES", 0)
    n_items, d = 150, 8
    ids = rng.permutation(np.repeat(np.arange(n_items), rng.integers(1, 4, n_items)))
    n = len(ids)
    img = rng.standard_normal((n_items, d))
    x = (img[ids] + 0.05 * rng.standard_normal((n, d))).astype(np.float32)
    t = rng.standard_normal((n, d)).astype(np.float32)
    t[ids % 2 == 0] += 1.5 * x[ids % 2 == 0]
    dup = rng.choice(n, 12, replace=False)
    t[dup[6:]] = t[dup[:6]]  # duplicate captions
    first = {v: i for i, v in reversed(list(enumerate(ids)))}
    a, b = first[ids[dup[0]]], first[ids[dup[1]]]
    if a != b:
        x[max(a, b)] = x[min(a, b)]  # two distinct images with identical rows
    store = embedx.open(_paired_store_with_ids(str(tmp_path / "r.zarr"), x, t, ids))
    local = compute(store, RECALL)
    dist = compute(store, RECALL, executor=dask_executor)
    assert dict(dist) == dict(local)  # the same integer counts: identical recalls
    ref = _grouped_recall_brute_force(x, t, list(ids))
    for k in RECALL:
        assert dist[k] == pytest.approx(ref[k], abs=1e-12), k
    assert 0 < dist["i2t_recall@1"] < 1


def test_distinct_bounds_cut_whole_store_blocks(tmp_path, rng, monkeypatch):
    """The tile rows cut from ``first`` alone: every distinct image once, in order, at least ROW_BLOCK a block but
    the last, each block ending at a store block's end; their unit rows are the stored rows normalized."""
    monkeypatch.setattr(retrieval, "ROW_BLOCK", 40)
    ids = rng.permutation(np.repeat(np.arange(120), rng.integers(1, 4, 120)))
    x = rng.standard_normal((len(ids), 4)).astype(np.float32)
    store = embedx.open(_paired_store_with_ids(str(tmp_path / "r.zarr"), x, x, ids))
    first, _ = retrieval._items(retrieval.groups_from_ids(store.ids()))
    blocks = retrieval._distinct_bounds(store, first)
    step = retrieval._rows(store, retrieval.ROW_BLOCK)
    assert len(blocks) > 2 and blocks[0][0] == 0 and blocks[-1][1] == len(first)
    assert all(b[1] == c[0] for b, c in zip(blocks, blocks[1:]))
    assert all(u1 - u0 >= 40 for u0, u1 in blocks[:-1])
    assert all(first[u1 - 1] // step < first[u1] // step for _, u1 in blocks[:-1])
    for u0, u1 in blocks:
        q = retrieval._distinct_rows(store, first[u0:u1], step).numpy()
        np.testing.assert_allclose(q, _unit64(store.images()[first[u0:u1]]), atol=1e-6)
