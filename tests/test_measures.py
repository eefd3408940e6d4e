"""Every measure against a float64 brute force of its definition (sklearn for both silhouettes)."""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_samples, silhouette_score

from embedx import measures as M
from embedx.formats.arrays import import_arrays
from embedx.store import Store
from tests.conftest import SHARED_DATA, assert_one_line_error, invoke, write_behind_embedx


def brute_force(x, t, y, paired):
    """float64, O(N^2), straight from the definitions in DESIGN.md, on the stored values."""
    x = x.astype(np.float64)
    t = t.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    n, c = len(x), len(t)
    # identical unit rows get bit-identical similarities (a BLAS may round identical columns differently)
    xu, xinv = np.unique(x, axis=0, return_inverse=True)
    tu, tinv = np.unique(t, axis=0, return_inverse=True)
    sim = (xu @ tu.T)[xinv.ravel()][:, tinv.ravel()]
    lab = np.flatnonzero(y >= 0)
    r = {"acs": sim[lab, y[lab]].mean(),
         "iimm_inter": ((sim[lab].sum(1) - sim[lab, y[lab]]) / (c - 1)).mean()}
    gx = x @ x.T
    r["iimm_intra"] = gx[np.triu_indices(n, 1)].mean()  # every image
    gl = gx[np.ix_(lab, lab)]
    r["iimm"] = (r["iimm_inter"] + gl[np.triu_indices(len(lab), 1)].mean()) / 2  # both terms: labelled images
    r["text_intra"] = (t @ t.T)[np.triu_indices(c, 1)].mean()
    r["gap"] = np.linalg.norm(x.mean(0) - t.mean(0))
    pts, mod = np.vstack([x, t]), [1] * n + [0] * c
    r["silhouette_euclidean"] = silhouette_score(pts, mod, metric="euclidean")
    r["silhouette_cosine"] = silhouette_score(pts, mod, metric="cosine")
    order = np.argsort(-sim[lab], axis=1, kind="stable")
    r["zeroshot_top1"] = (order[:, 0] == y[lab]).mean()
    r["zeroshot_top5"] = (order[:, :5] == y[lab][:, None]).any(1).mean()
    hit1 = order[:, 0] == y[lab]
    r["zeroshot_mean_per_class_recall"] = np.mean([hit1[y[lab] == k].mean() for k in np.unique(y[lab])])
    if paired:
        for k in (1, 5, 10):
            r[f"i2t_recall@{k}"] = (np.argsort(-sim, 1, kind="stable")[:, :k] == np.arange(n)[:, None]).any(1).mean()
            r[f"t2i_recall@{k}"] = (np.argsort(-sim.T, 1, kind="stable")[:, :k] == np.arange(n)[:, None]).any(1).mean()
    return r


def _store(tmp_path, rng, n, c, d, dtype, paired=False, scale=True, y=None):
    x = rng.standard_normal((n, d)).astype(np.float32)
    t = (rng.standard_normal((n if paired else c, d)) + 0.3 * rng.standard_normal(d)).astype(np.float32)
    if paired:
        t[: n // 2] += 1.5 * x[: n // 2]  # half of the pairs are aligned: recall is neither 0 nor 1
    if scale:  # unnormalized rows of very different lengths
        x *= rng.uniform(0.1, 10, (n, 1)).astype(np.float32)
    if y is None and not paired:
        y = rng.integers(0, c, n)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    args = dict(images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"), dtype=dtype, chunk_rows=97)
    if paired:
        args["paired"] = True
    else:
        np.save(tmp_path / "y.npy", y)
        args["labels"] = str(tmp_path / "y.npy")
    import_arrays(str(tmp_path / "s.zarr"), **args)
    s = Store(str(tmp_path / "s.zarr"))
    return s, s.images(), s.texts(), s.labels()


def _check(store, x, t, y, tol=1e-5):
    got = M.compute(store)
    ref = brute_force(x, t, y, store.paired)
    assert set(got) == set(ref)  # the mapping: the measures alone (the rest in .info, .timings)
    assert got.info["ties"].startswith("lowest index wins")  # the tie rule is stated in the result
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=tol), k
    assert (got.info["n_images"], got.info["n_texts"], got.info["dim"]) == (len(x), len(t), x.shape[1])
    return got


@pytest.mark.parametrize("n,c,d,dtype", [(300, 2, 8, "float16"), (1000, 37, 64, "float32"),
                                         (3000, 1000, 512, "float16"), (777, 5, 130, "float32")])
def test_class_stores_match_brute_force(tmp_path, rng, n, c, d, dtype):
    s, x, t, y = _store(tmp_path, rng, n, c, d, dtype)
    _check(s, x, t, y)


@pytest.mark.parametrize("n,d,dtype", [(400, 16, "float16"), (1500, 512, "float32")])
def test_paired_stores_match_brute_force(tmp_path, rng, n, d, dtype):
    s, x, t, y = _store(tmp_path, rng, n, None, d, dtype, paired=True)
    got = _check(s, x, t, y)
    assert 0 < got["i2t_recall@1"] < 1


def test_one_member_class_empty_class_and_unlabelled_rows(tmp_path, rng):
    n, c = 200, 6
    y = rng.integers(0, 4, n)  # classes 4 and 5 have no images
    y[17] = 4                  # class 4 has exactly one
    y[:5] = -1                 # unlabelled rows count for image measures only
    y[y == 4] = 0
    y[17] = 4
    s, x, t, y = _store(tmp_path, rng, n, c, 24, "float32", y=y)
    _check(s, x, t, y)


def test_iimm_on_a_partly_labelled_store_is_the_authors_iimm_of_the_labelled_images(tmp_path, rng):
    """Paper B's two terms over one image set: unlabelled rows change iimm_intra (every image) and gap, not iimm."""
    from embedx.measures.reference import authors_iimm

    n, c = 600, 9
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.3] = -1
    s, x, t, y = _store(tmp_path, rng, n, c, 32, "float16", y=y)
    x[y < 0] += 3.0  # unlabelled rows far off: a mixed image set would move iimm a lot
    np.save(tmp_path / "x.npy", x)
    import_arrays(str(tmp_path / "s2.zarr"), images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                  labels=str(tmp_path / "y.npy"))
    got = M.compute(Store(str(tmp_path / "s2.zarr")))
    lab = y >= 0
    assert got["iimm"] == pytest.approx(authors_iimm(x[lab], t, y[lab]), abs=1e-6)
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    g = xn @ xn.T
    assert got["iimm_intra"] == pytest.approx(g[np.triu_indices(n, 1)].mean(), abs=1e-6)  # every image
    assert abs(got["iimm_intra"] - g[np.ix_(lab, lab)][np.triu_indices(lab.sum(), 1)].mean()) > 1e-3


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_duplicate_class_texts_tie_to_the_lowest_index_as_argmax(tmp_path, rng, dtype):
    """ImageNet has two "crane" classes: identical prompts score identically, and argmax picks the first."""
    n, c, d = 400, 8, 24
    y = rng.integers(0, c, n)
    t = rng.standard_normal((c, d)).astype(np.float32)
    t[3] = t[1]
    t[6] = t[1]                  # three identical texts: 1, 3, 6
    t[7] = t[2]
    x = (t[y] * 2 + rng.standard_normal((n, d))).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    np.save(tmp_path / "y.npy", y)
    import_arrays(str(tmp_path / "s.zarr"), images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                  labels=str(tmp_path / "y.npy"), dtype=dtype)
    s = Store(str(tmp_path / "s.zarr"))
    got = M.compute(s, ["zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall"], per_class=True)
    ref = brute_force(s.images(), s.texts(), s.labels(), False)
    for k in ("zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall"):
        assert got[k] == pytest.approx(ref[k], abs=1e-12), k
    assert got.per_class["3"]["zeroshot_recall"] == 0 and got.per_class["6"]["zeroshot_recall"] == 0
    assert got.per_class["1"]["zeroshot_recall"] > 0.5  # the first of the identical texts takes the hits
    assert "lowest index wins" in got.info["ties"]


def test_real_clip_coco_embeddings(tmp_path):
    import os

    src = os.path.join(SHARED_DATA, "features_clip.npy")
    if not os.path.exists(src):
        from embedx.data import MODALITY_GAP_DIR

        src = os.path.join(MODALITY_GAP_DIR, "features_clip.npy")
    import_arrays(str(tmp_path / "coco.zarr"), paired_array=src)
    s = Store(str(tmp_path / "coco.zarr"))
    got = _check(s, s.images(), s.texts(), s.labels())
    assert got["gap"] == pytest.approx(0.85, abs=0.02) and got["i2t_recall@1"] == pytest.approx(0.55, abs=0.02)


def test_silhouette_by_class_labels_matches_sklearn(rng):
    import torch

    x = rng.standard_normal((500, 12)).astype(np.float32)
    y = rng.integers(0, 9, 500)
    y[3] = 42  # a singleton cluster
    from embedx.measures.silhouette import silhouette_exact

    got = silhouette_exact(torch.from_numpy(x), y)
    assert got == pytest.approx(silhouette_score(x.astype(np.float64), y), abs=1e-6)


def test_measure_cli_json_subset_and_errors(tmp_path, rng):
    s, x, t, y = _store(tmp_path, rng, 120, 4, 16, "float16")
    out = tmp_path / "m.json"
    r = invoke("measure", s.path, "--json", "--metrics", "acs,gap", "--out", out)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    head = {"schema", "embedx_version", "created", "stores", "options"}  # embedx.provenance
    assert set(d) == head | {"acs", "gap", "n_images", "n_texts", "dim", "timings_s", "integrity"}
    assert json.loads(out.read_text()) == d
    assert d["schema"] == "embedx.measure/1" and d["stores"]["store"]["path"] == s.path
    assert d["options"]["metrics"] == ["acs", "gap"]
    ref = brute_force(x, t, y, False)
    assert d["acs"] == pytest.approx(ref["acs"], abs=1e-5)
    r = invoke("measure", s.path)
    assert r.exit_code == 0 and "silhouette_euclidean" in r.stdout
    r = invoke("measure", s.path, "--metrics", "acs,nope")
    assert_one_line_error(r.exit_code, r.stderr, "unknown metric 'nope'")
    r = invoke("measure", s.path, "--metrics", "i2t_recall@1")
    assert_one_line_error(r.exit_code, r.stderr, "paired store")


def test_bad_rows_and_unfinished_stores_are_refused(tmp_path, rng):
    import zarr

    s, x, t, y = _store(tmp_path, rng, 50, 3, 8, "float32")
    write_behind_embedx(s.path, "images/embeddings", 7, np.nan)
    r = invoke("measure", s.path)
    assert_one_line_error(r.exit_code, r.stderr, "images row 7", "nan")
    write_behind_embedx(s.path, "images/embeddings", 7, 0)
    r = invoke("measure", s.path)
    assert_one_line_error(r.exit_code, r.stderr, "images row 7", "zeros")
    g = zarr.open_group(s.path, mode="r+")
    g.attrs["embedx"] = dict(g.attrs["embedx"], complete=False)
    r = invoke("measure", s.path)
    assert_one_line_error(r.exit_code, r.stderr, "unfinished")
    r = invoke("measure", tmp_path / "missing.zarr")
    assert_one_line_error(r.exit_code, r.stderr, "no store at")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_extreme_norms_import_and_measure_agree(tmp_path, rng, dtype):
    """Rows are judged as stored: inside [NORM_MIN, NORM_MAX] every scale gives the same numbers; outside, import
    and every measure pass refuse the row in one line (never NaN, inf or a shifted accuracy)."""
    from embedx.rows import NORM_MAX, NORM_MIN

    s, x, t, y = _store(tmp_path, rng, 300, 6, 16, "float32", scale=False)
    base = M.compute(s)
    lo, hi = (1e-2, 1e4) if dtype == "float16" else (NORM_MIN * 10, NORM_MAX / 10)
    xs = x / np.linalg.norm(x, axis=1, keepdims=True) * np.where(np.arange(300) % 2, lo, hi)[:, None]
    np.save(tmp_path / "xs.npy", xs)
    r = invoke("import", "--images", tmp_path / "xs.npy", "--texts", tmp_path / "t.npy", "--labels",
               tmp_path / "y.npy", "--dtype", dtype, "--out", tmp_path / "scaled.zarr")
    assert r.exit_code == 0, r.stderr
    scaled = Store(str(tmp_path / "scaled.zarr"))
    got = M.compute(scaled)
    ref = brute_force(scaled.images(), scaled.texts(), scaled.labels(), False)  # the definition on what is stored
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-5), k
    if dtype == "float32":  # and scaling unit rows by 1e-14 or 1e14 changes nothing
        for k in ("acs", "iimm", "gap", "silhouette_euclidean", "silhouette_cosine"):
            assert got[k] == pytest.approx(base[k], abs=1e-6), k

    bad = {"float16": [(1e-9, "direction"), (1e-5, "direction")], "float32": [(NORM_MIN / 1e3, "outside"), (NORM_MAX * 1e3, "outside"),
                                                         (1e25, "outside"), (1e40, "nan or inf")]}[dtype]
    for norm, msg in bad:
        xb = xs.copy()
        xb[11] = xb[11] / np.linalg.norm(xb[11]) * norm
        np.save(tmp_path / "xb.npy", xb)
        r = invoke("import", "--images", tmp_path / "xb.npy", "--texts", tmp_path / "t.npy", "--labels",
                   tmp_path / "y.npy", "--dtype", dtype, "--out", tmp_path / "bad.zarr")
        assert_one_line_error(r.exit_code, r.stderr, "images row 11", msg)
        assert not (tmp_path / "bad.zarr").exists()
        if dtype == "float32" and norm < 1e20:  # the same row written past import: every pass refuses it too
            write_behind_embedx(tmp_path / "scaled.zarr", "images/embeddings", 11, xb[11].astype(np.float32))
            for extra in ([], ["--silhouette-labels", "class"], ["--metrics", "zeroshot_top1"]):
                r = invoke("measure", tmp_path / "scaled.zarr", *extra)
                assert_one_line_error(r.exit_code, r.stderr, "images row 11", "outside")
            write_behind_embedx(tmp_path / "scaled.zarr", "images/embeddings", 11, xs[11].astype(np.float32))


def test_stale_recorded_sums_fall_back_to_a_second_pass(tmp_path, rng):
    """The cosine silhouette uses the store's recorded sum of image rows only if it checks out."""
    s, x, t, y = _store(tmp_path, rng, 300, 5, 16, "float32")
    write_behind_embedx(s.path, "images/embeddings", slice(10, 20), rng.standard_normal((10, 16)).astype(np.float32))
    s = Store(s.path)
    _check(s, s.images(), t, y)


def test_partials_merge_to_the_same_result_whatever_the_blocking(tmp_path, rng):
    from embedx.measures.stream import PassConfig, Partial, chunk_partial, normalized

    s, x, t, y = _store(tmp_path, rng, 500, 7, 12, "float32")
    tn = normalized(t)
    cfg = PassConfig(texts=tn, text_sum=tn.double().sum(0), n_texts=7, n_images=500, sum_x_hint=None, zeroshot=True)
    totals = []
    for cuts in ([0, 500], [0, 1, 250, 251, 500], list(range(0, 501, 97)) + [500]):
        tot = Partial()
        for a, b in zip(cuts[:-1], cuts[1:]):
            tot = tot.merge(chunk_partial(x[a:b], y[a:b], cfg, a))
        totals.append(tot)
    for other in totals[1:]:
        # float32 chunk sums, float64 across chunks: equal up to float32 rounding, far inside 1e-5
        np.testing.assert_allclose(other.class_sum, totals[0].class_sum, rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(other.top1, totals[0].top1)
        assert other.n_labelled == totals[0].n_labelled == 500


def test_sampled_silhouette_is_unbiased_with_a_confidence_interval(tmp_path, rng):
    s, x, t, y = _store(tmp_path, rng, 400, 3, 10, "float32")
    exact = brute_force(x, t, y, False)["silhouette_euclidean"]
    full = M.compute(s, ["silhouette_euclidean"], silhouette_mode="sample", sample_size=403)
    assert full["silhouette_euclidean"] == pytest.approx(exact, abs=1e-6)   # the whole population: exact
    assert full.estimates["silhouette_euclidean"]["stderr"] == pytest.approx(0, abs=1e-12)
    ests = [M.compute(s, ["silhouette_euclidean"], silhouette_mode="sample", sample_size=60, seed=k)
            for k in range(40)]
    vals = np.array([e["silhouette_euclidean"] for e in ests])
    covered = np.mean([e.estimates["silhouette_euclidean"]["ci95"][0] <= exact <=
                       e.estimates["silhouette_euclidean"]["ci95"][1] for e in ests])
    assert abs(vals.mean() - exact) < 4 * vals.std(ddof=1) / np.sqrt(len(vals))  # no bias beyond noise
    assert covered >= 0.8


def test_per_class_and_class_label_silhouette(tmp_path, rng):
    s, x, t, y = _store(tmp_path, rng, 300, 4, 10, "float32")
    r = M.compute(s, ["acs", "silhouette_euclidean", "zeroshot_top1"], per_class=True, silhouette_labels="class")
    xn = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    tn = t / np.linalg.norm(t.astype(np.float64), axis=1, keepdims=True)
    per_point = silhouette_samples(np.vstack([xn, tn]), [1] * 300 + [0] * 4)
    pred = np.argmax(xn @ tn.T, 1)
    for k in range(4):
        row = r.per_class[str(k)]
        m = y == k
        assert row["n_images"] == m.sum()
        assert row["acs"] == pytest.approx((xn[m] @ tn[k]).mean(), abs=1e-6)
        assert row["zeroshot_recall"] == pytest.approx((pred[m] == k).mean(), abs=1e-12)
        assert row["silhouette_euclidean"] == pytest.approx(per_point[:300][m].mean(), abs=1e-5)
    assert r["silhouette_class_euclidean"] == pytest.approx(silhouette_score(xn, y), abs=1e-5)


@pytest.mark.parametrize("cached", [True, False, "gemm"])
def test_streamed_class_silhouette_matches_sklearn(tmp_path, rng, monkeypatch, cached):
    """Class-label silhouette read from the store in column blocks (re-read per row block when not cached),
    unlabelled rows left out, a singleton and an empty class: sklearn on the labelled rows; "gemm": the block
    pairs and the sampled rows through the CPU sgemm tiles (kernels.ops.pair_gemm)."""
    from embedx.measures import silhouette as S

    if cached == "gemm":
        _gemm_pairs(monkeypatch)

    monkeypatch.setattr(S, "STREAM_COLS", 64)
    monkeypatch.setattr(S, "STREAM_ROWS", 50)
    if not cached:
        monkeypatch.setattr(S, "CACHE_BYTES", 0)
    y = rng.integers(0, 6, 420)
    y[y == 5] = 4               # class 5 empty
    y[rng.choice(420, 37, replace=False)] = -1
    y[y == 3] = 2
    y[11] = 3                   # class 3 a singleton
    s, x, t, y = _store(tmp_path, rng, 420, 6, 9, "float16", y=y)
    keep = y >= 0
    xn = x[keep].astype(np.float64)
    xn /= np.linalg.norm(xn, axis=1, keepdims=True)
    r = M.compute(s, ["acs"], silhouette_labels="class")
    assert r["silhouette_class_euclidean"] == pytest.approx(silhouette_score(xn, y[keep]), abs=1e-5)
    whole = M.compute(s, ["acs"], silhouette_labels="class", silhouette_mode="sample", sample_size=10_000)
    assert whole["silhouette_class_euclidean"] == pytest.approx(r["silhouette_class_euclidean"], abs=1e-9)
    part = M.compute(s, ["acs"], silhouette_labels="class", silhouette_mode="sample", sample_size=40, seed=3)
    est = part.estimates["silhouette_class_euclidean"]
    assert est["sample_size"] == 40 and est["population"] == keep.sum()
    vals = silhouette_samples(xn, y[keep])
    pick = np.sort(np.random.default_rng(3).choice(keep.sum(), 40, replace=False))
    assert est["estimate"] == pytest.approx(vals[pick].mean(), abs=1e-5)


def test_faiss_and_blocked_retrieval_agree(tmp_path, rng):
    s, x, t, y = _store(tmp_path, rng, 300, None, 16, "float32", paired=True)
    a = M.compute(s, list(M.RETRIEVAL))
    b = M.compute(s, list(M.RETRIEVAL), knn="faiss")
    for k in M.RETRIEVAL:
        assert a[k] == pytest.approx(b[k], abs=1e-9)


def test_several_positives_per_query(tmp_path, rng):
    """Three captions of the same image (same id): each is a positive for it."""
    from embedx.measures.retrieval import recall_at_k
    import torch

    img = rng.standard_normal((6, 8)).astype(np.float32)
    txt = rng.standard_normal((6, 8)).astype(np.float32)
    img[1] = img[2] = img[0]
    txt[2] = img[0] * 3  # the third caption of image 0 is a perfect match; the first two are not
    groups = np.array([0, 0, 0, 3, 4, 5])
    n = lambda a: torch.from_numpy(a / np.linalg.norm(a, axis=1, keepdims=True))
    r = recall_at_k(n(img), n(txt), groups)
    sim = n(img).numpy() @ n(txt).numpy().T
    uimg = [0, 3, 4, 5]
    top1 = [groups[np.argmax(sim[i])] == groups[i] for i in uimg]
    assert r["i2t_recall@1"] == pytest.approx(np.mean(top1)) and top1[0]


def test_measure_cli_options(tmp_path, rng):
    s, x, t, y = _store(tmp_path, rng, 150, 3, 8, "float32")
    r = invoke("measure", s.path, "--silhouette", "sample", "--sample-size", "40", "--per-class",
               "--silhouette-labels", "class")
    assert r.exit_code == 0, r.stderr
    assert "95% CI" in r.stdout and "per class" in r.stdout and "silhouette_class_euclidean" in r.stdout
    r = invoke("measure", s.path, "--json", "--silhouette", "sample", "--sample-size", "40")
    d = json.loads(r.stdout)
    lo, hi = d["estimates"]["silhouette_euclidean"]["ci95"]
    assert lo <= d["silhouette_euclidean"] <= hi and d["estimates"]["silhouette_euclidean"]["sample_size"] == 40


def test_profile_reports_kernels_against_roofline_and_references():
    r = invoke("profile", "--n", "256", "--d", "32", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["roofline"]["matmul_gflops"] > 0 and d["roofline"]["copy_gbs"] > 0
    names = [row["kernel"] for row in d["kernels"]]
    for prefix in ("cluster_distance_sums", "topk", "stream_pass"):
        assert any(name.startswith(prefix) for name in names), (prefix, names)
    for row in d["kernels"]:
        assert row["seconds"] > 0 and row["reference_seconds"] > 0 and row["roofline_share"] >= 0
    r = invoke("profile", "--n", "256", "--d", "32")
    assert r.exit_code == 0 and "roofline" in r.stdout


def test_one_class_store_reports_undefined_measures_as_null(tmp_path, rng):
    s, x, t, y = _store(tmp_path, rng, 60, 1, 8, "float32", y=np.zeros(60, np.int64))
    r = invoke("measure", s.path, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["iimm_inter"] is None and d["iimm"] is None and d["text_intra"] is None
    xn = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    tn = t / np.linalg.norm(t.astype(np.float64), axis=1, keepdims=True)
    assert d["acs"] == pytest.approx((xn @ tn[0]).mean(), abs=1e-6)
    assert d["silhouette_euclidean"] == pytest.approx(silhouette_score(np.vstack([xn, tn]), [1] * 60 + [0]), abs=1e-5)
    assert d["zeroshot_top1"] == 1.0
    assert "undefined" in invoke("measure", s.path).stdout


def _grouped_recall_brute_force(x, t, ids):
    """float64 dense similarity + stable argsort; queries: the first row of each id, and every text."""
    x = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    t = t.astype(np.float64) / np.linalg.norm(t.astype(np.float64), axis=1, keepdims=True)
    first_row = {}
    for i, v in enumerate(ids):
        first_row.setdefault(v, i)
    first = np.array(sorted(first_row.values()))
    pos = np.searchsorted(first, [first_row[v] for v in ids])
    # identical vectors get bit-identical similarities (a BLAS may round identical columns differently)
    qu, qinv = np.unique(x[first], axis=0, return_inverse=True)
    tu, tinv = np.unique(t, axis=0, return_inverse=True)
    sim = (qu @ tu.T)[qinv.ravel()][:, tinv.ravel()]
    i2t = pos[np.argsort(-sim, 1, kind="stable")] == np.arange(len(first))[:, None]
    t2i = np.argsort(-sim.T, 1, kind="stable") == pos[:, None]
    r = {}
    for k in (1, 5, 10):
        r[f"i2t_recall@{k}"] = i2t[:, :k].any(1).mean()
        r[f"t2i_recall@{k}"] = t2i[:, :k].any(1).mean()
    return r


def _paired_store_with_ids(path, x, t, ids):
    """A float32 paired store whose rows carry the source ids ``img<id>`` (rows of one id: one image)."""
    from embedx.store import StoreWriter

    n = len(x)
    meta = {"model": "m", "pretrained": "none", "seed": 0, "dataset": "d", "dataset_sha256": "x", "mode": "paired"}
    w = StoreWriter.create(path, n_rows=n, dim=x.shape[1], meta=meta, dtype="float32", chunk_rows=16,
                           background=False)
    w.append(x, None, [f"img{v}" for v in ids], text_emb=t, text_names=[f"c{i}" for i in range(n)])
    w.commit(n)
    w.finalize()
    return path


def _small_blocks(monkeypatch, cached):
    from embedx.measures import retrieval

    monkeypatch.setattr(retrieval, "ROW_BLOCK", 40)
    monkeypatch.setattr(retrieval, "COL_BLOCK", 64)
    if not cached:  # texts re-read per row block
        monkeypatch.setattr(retrieval, "CACHE_BYTES", 0)


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_streamed_recall_matches_brute_force(tmp_path, rng, monkeypatch, cached, dtype):
    from embedx.measures.retrieval import recall_at_k_streamed

    _small_blocks(monkeypatch, cached)
    s, x, t, y = _store(tmp_path, rng, int(rng.integers(150, 400)), None, int(rng.integers(4, 48)), dtype, paired=True)
    got = recall_at_k_streamed(s)
    ref = _grouped_recall_brute_force(x, t, [str(i) for i in range(len(x))])
    assert got == pytest.approx(ref, abs=1e-12)
    assert 0 < got["i2t_recall@1"] < 1


@pytest.mark.parametrize("cached", [True, False])
def test_streamed_recall_with_repeated_ids(tmp_path, rng, monkeypatch, cached):
    """Several captions per image, their rows scattered over the store (image rows of an id need not agree:
    the id's first row is its image)."""
    _small_blocks(monkeypatch, cached)
    n_items, d = int(rng.integers(40, 90)), int(rng.integers(4, 32))
    ids = rng.permutation(np.repeat(np.arange(n_items), rng.integers(1, 5, n_items)))
    n = len(ids)
    img = rng.standard_normal((n_items, d))
    x = (img[ids] + 0.05 * rng.standard_normal((n, d))).astype(np.float32)
    t = rng.standard_normal((n, d)).astype(np.float32)
    t[ids % 2 == 0] += 1.5 * x[ids % 2 == 0]  # the captions of half of the items are aligned
    s = Store(_paired_store_with_ids(str(tmp_path / "rep.zarr"), x, t, ids))
    got = M.compute(s, list(M.RETRIEVAL) + ["zeroshot_top1"])
    ref = _grouped_recall_brute_force(x, t, list(ids))
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    assert got["zeroshot_top1"] == got["i2t_recall@1"] and 0 < got["i2t_recall@1"] < 1
    faiss = M.compute(s, list(M.RETRIEVAL), knn="faiss")
    for k in M.RETRIEVAL:
        assert faiss[k] == pytest.approx(got[k], abs=1e-12), k


def test_measures_through_the_triton_kernels_match_brute_force(tmp_path, rng, monkeypatch):
    """The pairwise measures dispatched to the Triton kernels (as on a CUDA device; here the interpreter)."""
    monkeypatch.setenv("EMBEDX_KERNEL", "triton")
    s, x, t, y = _store(tmp_path, rng, 70, 3, 16, "float16")
    _check(s, x, t, y)
    (tmp_path / "p").mkdir()
    p, px, pt, py = _store(tmp_path / "p", rng, 60, None, 16, "float32", paired=True)
    _check(p, px, pt, py)


def test_device_option(tmp_path, rng):
    s, x, t, y = _store(tmp_path, rng, 40, 3, 8, "float32")
    r = invoke("measure", s.path, "--metrics", "silhouette_euclidean", "--device", "cpu", "--json")
    assert r.exit_code == 0 and "silhouette_euclidean" in r.stdout
    if not __import__("torch").cuda.is_available():
        r = invoke("measure", s.path, "--device", "cuda")
        assert_one_line_error(r.exit_code, r.stderr, "no CUDA device")
    r = invoke("measure", s.path, "--device", "tpu9")
    assert_one_line_error(r.exit_code, r.stderr, "unknown device")


@pytest.mark.parametrize("path", ["streamed", "uncached", "in_memory", "resident_triton"])
def test_duplicate_captions_and_images_tie_to_the_lowest_index(tmp_path, rng, monkeypatch, path):
    """ConVIRT repeats report texts and datasets repeat images: identical vectors tie exactly, and a stable
    ranking puts the lower index first, for the image and for the text queries alike."""
    from embedx.measures import retrieval

    n_items, d = 60, 12
    ids = np.repeat(np.arange(n_items), rng.integers(1, 3, n_items))  # some images have two captions
    n = len(ids)
    img = rng.standard_normal((n_items, d))
    img[[7, 30, 44]] = img[20]                  # the same image as four items
    x = img[ids].astype(np.float32)
    t = (0.6 * x + rng.standard_normal((n, d))).astype(np.float32)
    base = t[10].copy()
    for j in (3, 10, 25, 61, n - 1):            # one report text repeated across items (and within one)
        t[j] = base
    two = np.flatnonzero(np.diff(ids) == 0)[0]  # an image with two captions: make them identical too
    t[two + 1] = t[two]
    path_s = _paired_store_with_ids(str(tmp_path / "dup.zarr"), x, t, ids)
    ref = _grouped_recall_brute_force(x, t, list(ids))
    _small_blocks(monkeypatch, path != "uncached")
    if path == "resident_triton":
        monkeypatch.setenv("EMBEDX_KERNEL", "triton")
        monkeypatch.setattr(retrieval, "resident_budget", lambda dev: 1 << 40)
        monkeypatch.setattr(retrieval, "resident_rows", lambda dev: 23)
    if path == "in_memory":
        xn = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))
        tn = torch.from_numpy(t / np.linalg.norm(t, axis=1, keepdims=True))
        got = retrieval.recall_at_k(xn, tn, retrieval.groups_from_ids([f"img{v}" for v in ids]))
    else:
        got = M.compute(Store(path_s), list(M.RETRIEVAL))
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-12), (k, got[k], v)


def _tight_store(tmp_path, rng, kind, dtype):
    """Points close together: 'tight' = both modalities within ~1e-3 of their centres (median pairwise distance
    ~2e-3); 'duplicates' = spread classes whose images come in near-duplicate triples 1e-4 apart."""
    d, c = 32, 4
    if kind == "tight":
        n = 400
        x = rng.standard_normal(d) + 1e-3 * rng.standard_normal((n, d)) / np.sqrt(d)
        t = rng.standard_normal(d) + 1e-3 * rng.standard_normal((c, d)) / np.sqrt(d)
        y = rng.integers(0, c, n)
    else:
        base = rng.standard_normal((130, d))
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        x = np.repeat(base, 3, axis=0) + 1e-4 * rng.standard_normal((390, d)) / np.sqrt(d)
        t = rng.standard_normal((c, d))
        y = np.repeat(rng.integers(0, c, 130), 3)
    for k, arr in (("x", x), ("t", t), ("y", y)):
        np.save(tmp_path / f"{k}.npy", arr)
    import_arrays(str(tmp_path / "s.zarr"), images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                  labels=str(tmp_path / "y.npy"), dtype=dtype, chunk_rows=64)
    return Store(str(tmp_path / "s.zarr"))


@pytest.mark.parametrize("kind,dtype", [("tight", "float32"), ("duplicates", "float32"), ("duplicates", "float16")])
@pytest.mark.parametrize("path", ["streamed", "uncached", "resident_triton", "gemm"])
def test_silhouettes_stay_exact_on_tight_data_and_near_duplicates(tmp_path, rng, monkeypatch, kind, dtype, path):
    """Within 1e-5 of sklearn's float64 silhouette whatever the spread: float32 |x|^2 + |y|^2 - 2x.y cancels
    for close points, so tiles are centred and near pairs recomputed directly (kernels.cluster_distance)."""
    from embedx.measures import silhouette

    s = _tight_store(tmp_path, rng, kind, dtype)
    x = s.images().astype(np.float64)
    t = s.texts().astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    y = s.labels()
    if path == "uncached":
        monkeypatch.setattr(silhouette, "CACHE_BYTES", 0)
        monkeypatch.setattr(silhouette, "STREAM_COLS", 64)
    if path == "resident_triton":
        monkeypatch.setenv("EMBEDX_KERNEL", "triton")
        monkeypatch.setattr(silhouette, "resident_budget", lambda dev: 1 << 40)
        monkeypatch.setattr(silhouette, "resident_rows", lambda dev: 150)
    if path == "gemm":
        _gemm_pairs(monkeypatch)
    got = M.compute(s, ["silhouette_euclidean"], silhouette_labels="class")
    ref_mod = silhouette_score(np.vstack([x, t]), [1] * len(x) + [0] * len(t))
    ref_cls = silhouette_score(x, y)
    assert got["silhouette_euclidean"] == pytest.approx(ref_mod, abs=1e-5)
    assert got["silhouette_class_euclidean"] == pytest.approx(ref_cls, abs=1e-5)


@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize("spread", [1e-2, 1e-4])
def test_cosine_silhouette_stays_exact_when_tight_clusters_overlap(tmp_path, rng, paired, spread):
    """Images and texts both within `spread` of one direction: every cosine distance is tiny, float32 unit rows
    would err by more than the values (before: a 1e-2 error, or NaN); the exact float64 passes take over."""
    d, n = 32, 300
    base = rng.standard_normal(d)
    x = base + spread * rng.standard_normal((n, d)) / np.sqrt(d)
    t = base + spread * rng.standard_normal((n if paired else 5, d)) / np.sqrt(d)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    args = dict(images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"), dtype="float32")
    if paired:
        args["paired"] = True
    else:
        np.save(tmp_path / "y.npy", rng.integers(0, 5, n))
        args["labels"] = str(tmp_path / "y.npy")
    import_arrays(str(tmp_path / "s.zarr"), **args)
    s = Store(str(tmp_path / "s.zarr"))
    xs, ts = s.images().astype(np.float64), s.texts().astype(np.float64)
    ref = silhouette_score(np.vstack([xs, ts]), [1] * len(xs) + [0] * len(ts), metric="cosine")
    got = M.compute(s, ["silhouette_cosine", "silhouette_euclidean"])
    assert got["silhouette_cosine"] == pytest.approx(ref, abs=1e-5)
    assert got["silhouette_euclidean"] == pytest.approx(
        silhouette_score(np.vstack([xs / np.linalg.norm(xs, axis=1, keepdims=True),
                                    ts / np.linalg.norm(ts, axis=1, keepdims=True)]), [1] * len(xs) + [0] * len(ts)),
        abs=1e-5)


def _gemm_pairs(monkeypatch):
    """The exact silhouette's block pairs through kernels.ops.pair_gemm (sgemm + fused numba pass) at any size,
    several row blocks, tile rows split between threads."""
    from embedx.kernels.ops import cluster_distance, pair_gemm
    from embedx.measures import silhouette

    monkeypatch.setattr(cluster_distance, "PAIR_GEMM_MIN", 0)
    monkeypatch.setattr(pair_gemm, "PART_ROWS", 16)
    monkeypatch.setattr(pair_gemm, "REDUCE_THREADS", 2)
    monkeypatch.setattr(silhouette, "PAIR_ROWS", 128)


@pytest.mark.parametrize("path", ["streamed", "resident_triton", "gemm"])
@pytest.mark.parametrize("spread,dtype", [(1e-3, "float32"), (1e-4, "float32"), (1e-2, "float16")])
def test_euclidean_silhouettes_stay_exact_when_everything_lies_near_one_direction(tmp_path, rng, monkeypatch,
                                                                                  path, spread, dtype):
    """Images and texts within `spread` of one direction, so a_p and b_p are both tiny: unit rows rounded to
    float32 moved the silhouette by 7e-5 at 1e-4 (they are now centred in float64 before the cast; the GPU's
    resident path hands such data to the centred streamed path)."""
    from embedx.measures import silhouette

    d, n, c = 32, 240, 4
    base = rng.standard_normal(d)
    x = base + spread * rng.standard_normal((n, d)) / np.sqrt(d)
    t = base + spread * rng.standard_normal((c, d)) / np.sqrt(d)
    y = rng.integers(0, c, n)
    for k, arr in (("x", x), ("t", t), ("y", y)):
        np.save(tmp_path / f"{k}.npy", arr)
    import_arrays(str(tmp_path / "s.zarr"), images=str(tmp_path / "x.npy"), texts=str(tmp_path / "t.npy"),
                  labels=str(tmp_path / "y.npy"), dtype=dtype, chunk_rows=64)
    s = Store(str(tmp_path / "s.zarr"))
    xs, ts = s.images().astype(np.float64), s.texts().astype(np.float64)
    xs /= np.linalg.norm(xs, axis=1, keepdims=True)
    ts /= np.linalg.norm(ts, axis=1, keepdims=True)
    if path == "resident_triton":
        monkeypatch.setenv("EMBEDX_KERNEL", "triton")
        monkeypatch.setattr(silhouette, "resident_budget", lambda dev: 1 << 40)
        monkeypatch.setattr(silhouette, "resident_rows", lambda dev: 100)
    if path == "gemm":
        _gemm_pairs(monkeypatch)
    got = M.compute(s, ["silhouette_euclidean"], silhouette_labels="class")
    assert got["silhouette_euclidean"] == pytest.approx(
        silhouette_score(np.vstack([xs, ts]), [1] * n + [0] * c), abs=1e-5)
    assert got["silhouette_class_euclidean"] == pytest.approx(silhouette_score(xs, y), abs=1e-5)


def test_zero_shot_of_a_store_without_a_labelled_image_is_undefined_not_zero(tmp_path, rng):
    """Every label -1: no image to score, so zero-shot accuracy is undefined (NaN; null in the JSON), while the
    measures over every image (gap, iimm_intra) are still the float64 brute force."""
    n, c = 60, 5
    s, x, t, y = _store(tmp_path, rng, n, c, 16, "float32", y=np.full(n, -1))
    got = M.compute(s, ["zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall", "gap", "iimm_intra"])
    for k in ("zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall"):
        assert np.isnan(got[k]), (k, got[k])
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    tn = t.astype(np.float64) / np.linalg.norm(t.astype(np.float64), axis=1, keepdims=True)
    assert got["gap"] == pytest.approx(np.linalg.norm(xn.mean(0) - tn.mean(0)), abs=1e-6)
    r = invoke("measure", s.path, "--metrics", "zeroshot_top1,gap", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["zeroshot_top1"] is None and doc["gap"] == pytest.approx(got["gap"], abs=1e-9)
