"""The Python API and the engine under it: array metrics against independent references, the planner's passes,
the registry's extension point, errors naming parameters, and inputs never modified."""
import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score

import embedx
from embedx import metrics
from embedx.engine import plan as P
from embedx.engine import registry
from embedx.errors import EmbedxError
from embedx.rowsource import ArrayRows


def _unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _class_data(rng, n=300, c=7, d=24):
    return rng.normal(size=(n, d)), rng.normal(size=(c, d)), rng.integers(-1, c, n)


def test_array_metrics_match_float64_brute_force_and_sklearn(rng):
    x, t, y = _class_data(rng)
    xn, tn = _unit(x), _unit(t)
    lab = y >= 0
    s = xn @ tn.T
    acs = s[lab, y[lab]].mean()
    inter = ((s[lab].sum(1) - s[lab, y[lab]]) / (len(t) - 1)).mean()
    g = xn[lab] @ xn[lab].T
    intra_lab = (g.sum() - lab.sum()) / (lab.sum() * (lab.sum() - 1))
    gall = xn @ xn.T
    intra = (gall.sum() - len(x)) / (len(x) * (len(x) - 1))
    assert metrics.acs(x, t, y) == pytest.approx(acs, abs=1e-5)
    assert metrics.iimm_inter(x, t, y) == pytest.approx(inter, abs=1e-5)
    assert metrics.iimm(x, t, y) == pytest.approx((inter + intra_lab) / 2, abs=1e-5)
    assert metrics.iimm_intra(x) == pytest.approx(intra, abs=1e-5)
    assert metrics.modality_gap(x, t) == pytest.approx(np.linalg.norm(xn.mean(0) - tn.mean(0)), abs=1e-5)
    top1 = (np.argmax(s[lab], 1) == y[lab]).mean()
    assert metrics.zeroshot_accuracy(x, t, y) == pytest.approx(top1, abs=1e-12)
    both, mod = np.vstack([xn, tn]), np.r_[np.ones(len(x)), np.zeros(len(t))]
    for metric in ("euclidean", "cosine"):
        assert metrics.modality_silhouette(x, t, metric) == pytest.approx(
            silhouette_score(both, mod, metric=metric), abs=1e-5)
    assert metrics.silhouette(x, np.where(y < 0, 0, y)) == pytest.approx(
        silhouette_score(x, np.where(y < 0, 0, y)), abs=1e-5)


def test_paired_recall_matches_brute_force_and_torch_inputs_agree(rng):
    x = rng.normal(size=(120, 16))
    t = x + 0.8 * rng.normal(size=x.shape)
    s = _unit(x) @ _unit(t).T
    for k in (1, 5, 10):
        i2t = (np.argsort(-s, 1, kind="stable")[:, :k] == np.arange(len(x))[:, None]).any(1).mean()
        t2i = (np.argsort(-s.T, 1, kind="stable")[:, :k] == np.arange(len(x))[:, None]).any(1).mean()
        assert metrics.recall_at_k(x, t, k) == pytest.approx(i2t, abs=1e-12)
        assert metrics.recall_at_k(x, t, k, "t2i") == pytest.approx(t2i, abs=1e-12)
    xt, tt = torch.from_numpy(x).float(), torch.from_numpy(t).float()
    assert metrics.recall_at_k(xt, tt, 5) == metrics.recall_at_k(x.astype(np.float32), t.astype(np.float32), 5)
    assert metrics.acs(xt.half(), tt.half()) == pytest.approx(metrics.acs(x, t), abs=2e-3)


def test_inputs_are_never_modified(rng):
    x, t, y = _class_data(rng, 200, 5, 16)
    xt = torch.from_numpy(x.copy()).float()
    keep = x.copy(), t.copy(), y.copy(), xt.clone()
    embedx.measure((x, t, y), silhouette_labels="class", per_class=True, progress=False)
    embedx.transfer((x, t, y), scores=["hscore", "sfda", "leep"])
    embedx.measure(ArrayRows(xt, t, y), progress=False)
    for a, b in zip((x, t, y), keep[:3]):
        assert np.array_equal(a, b)
    assert torch.equal(xt, keep[3])


def test_arrays_and_a_store_of_the_same_rows_give_the_same_numbers(tmp_path, rng):
    x, t, y = _class_data(rng, 256, 6, 32)
    x32, t32 = x.astype(np.float32), t.astype(np.float32)
    embedx.import_arrays(tmp_path / "s.zarr", x32, t32, y, dtype="float32")
    from_store = embedx.measure(embedx.open(tmp_path / "s.zarr"), progress=False)
    from_arrays = embedx.measure((x32, t32, y), progress=False)
    for k in from_store:  # the store's recorded sums let the cosine silhouette join the first pass; arrays
        # take a second pass: float32 dots summed in another order (both within 1e-5 of float64, tested elsewhere)
        assert from_arrays[k] == pytest.approx(from_store[k], abs=1e-7 if k == "silhouette_cosine" else 1e-9), k
    tr_store = embedx.transfer(tmp_path / "s.zarr")
    tr_arrays = embedx.transfer((x32, t32, y))
    assert dict(tr_arrays) == pytest.approx(dict(tr_store), rel=1e-9, abs=1e-12)


def test_result_is_typed_and_its_dict_is_the_json(rng):
    x, t, y = _class_data(rng, 120, 4, 8)
    r = embedx.measure((x, t, y), metrics=["acs", "silhouette_euclidean"], silhouette="sample", sample_size=50,
                       progress=False)
    assert set(r) == {"acs", "silhouette_euclidean"}
    d = r.to_dict()
    assert {k: d[k] for k in r} == dict(r) and d["n_images"] == 120 and d["timings_s"] == r.timings
    assert d["estimates"] == r.estimates and d["schema"] == "embedx.measure/1"
    assert r.estimates["silhouette_euclidean"]["sample_size"] == 50
    assert r.info["n_images"] == 120 and r.info["dim"] == 8 and "silhouette_euclidean" in r.timings


class CountingRows(ArrayRows):
    """ArrayRows that counts full passes over the image rows: reads of the last row (a pass reads its blocks in
    tasks, ``read_images_into``; the shift of the first pass reads only the first block)."""

    passes = 0

    def iter_images(self, *a, **k):
        CountingRows.passes += 1
        return super().iter_images(*a, **k)

    def read_images_into(self, start, out):
        CountingRows.passes += start + len(out) == self.n_images
        return super().read_images_into(start, out)


@pytest.mark.parametrize("scores,passes", [(["hscore", "logme", "gbc"], 1), (["nce"], 1), (["leep"], 2),
                                           (["sfda"], 3), (["hscore", "leep", "sfda", "nce"], 3)])
def test_planner_reads_the_fewest_passes(rng, monkeypatch, scores, passes):
    from embedx.transferability import moments

    monkeypatch.setattr(moments, "BLOCK_BYTES", 32 * 8 * 8)  # blocks of 32 rows: 5 blocks a pass
    x, t, y = _class_data(rng, 150, 5, 8)
    CountingRows.passes = 0
    embedx.transfer(CountingRows(x, t, y), scores=scores)
    assert CountingRows.passes == passes


def test_plan_groups_needs_by_depth():
    specs = [registry.get("transfer", s) for s in ("sfda", "leep", "transrate")]
    from embedx.transferability.engine import NEEDS

    steps = P.plan(specs, NEEDS)
    passes = [sorted(n.name for n in s.needs) for s in steps if s.kind == "pass"]
    assert passes == [["class_scatter", "moments", "zeroshot"], ["confmix", "leep_likelihood"],
                      ["sfda_probability"]]


def test_adding_a_score_is_one_registration(rng):
    """A new transfer score: one ``register`` call naming what it needs; the planner, --scores and the table
    pick it up."""
    x, t, y = _class_data(rng, 100, 4, 8)

    @registry.register("class_balance", "transfer", needs=("moments",), requires=("labels",), default=False,
                       summary="entropy of the class sizes", citation="(test)")
    def class_balance(ctx) -> float:
        """-sum_c p_c ln p_c, p_c = n_c / N."""
        p = ctx["moments"].n / ctx["moments"].N
        return float(-(p * np.log(p)).sum())

    try:
        got = embedx.transfer((x, t, y), scores=["class_balance", "hscore"])
        p = np.bincount(y[y >= 0]) / (y >= 0).sum()
        assert got["class_balance"] == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)
        assert "class_balance" in registry.names("transfer") and "class_balance" not in registry.names(
            "transfer", defaults_only=True)
        assert "`class_balance`" in registry.table("transfer")
    finally:
        registry.unregister("transfer", "class_balance")


@pytest.mark.parametrize("call,param", [
    (lambda x, t, y: metrics.iimm(x, t[:, :5], y), "texts"),
    (lambda x, t, y: metrics.iimm(x, t, np.where(y == 0, 99, y)), "labels"),
    (lambda x, t, y: metrics.iimm(x, t, y[:-1]), "labels"),
    (lambda x, t, y: embedx.measure((x, t, y), metrics=["nope"]), "metrics"),
    (lambda x, t, y: embedx.measure((x, t, y), silhouette="fast"), "silhouette"),
    (lambda x, t, y: embedx.transfer((x, t, y), logit_scale=-1.0), "logit_scale"),
    (lambda x, t, y: embedx.transfer((x, t, y), scores=["hscore", "foo"]), "scores"),
    (lambda x, t, y: metrics.zeroshot_accuracy(x, t, y, k=0), "k"),
    (lambda x, t, y: embedx.measure("no/such/store.zarr"), "source"),
])
def test_errors_name_the_python_parameter(rng, call, param):
    x, t, y = _class_data(rng, 50, 4, 8)
    with pytest.raises(EmbedxError) as e:
        call(x, t, y)
    if param is not None:
        assert getattr(e.value, "param", None) == param
        assert "--" not in str(e.value)  # the library never names a CLI flag


def test_bad_rows_name_the_row(rng):
    x, t, y = _class_data(rng, 50, 4, 8)
    x[17] = 0
    with pytest.raises(EmbedxError, match="images row 17 is all zeros"):
        metrics.acs(x, t, y)
    x[17] = np.nan
    with pytest.raises(EmbedxError, match="images row 17 contains NaN"):
        embedx.transfer((x, t, y))


def test_registry_covers_every_score_and_drives_the_lists():
    from embedx import measures
    from embedx import transferability as transfer

    assert registry.names("measure", {"labels", "texts"}, defaults_only=True) == measures.BASE
    assert set(measures.RETRIEVAL) == {f"{s}_recall@{k}" for s in ("i2t", "t2i") for k in (1, 5, 10)}
    assert transfer.SCORES == ("hscore", "gbc", "gbc_diagonal", "transrate", "logme", "sfda", "leep", "nce")
    for family in ("measure", "transfer"):
        for s in registry.scores(family).values():
            assert s.formula and s.citation and s.summary, s.name


# The public functions as documented (README "Python API", their docstrings): every parameter by name, in order.
PUBLIC_SIGNATURES = {
    "open": ["path", "allow_partial", "verify_content"],
    "measure": ["source", "metrics", "device", "silhouette", "sample_size", "seed", "silhouette_labels", "knn",
                "per_class", "progress", "executor", "cluster", "client"],
    "transfer": ["source", "scores", "logit_scale", "progress", "executor", "cluster", "client"],
    "drift": ["before", "after", "others", "metrics", "silhouette", "sample_size", "seed", "knn", "knn_k",
              "knn_sample", "plot_sample", "report", "force", "executor", "cluster", "client"],
    "embed": ["out", "data", "model", "pretrained", "checkpoint", "seed", "device", "batch_size", "dtype", "progress",
              "templates", "codec", "chunk_rows", "limit", "per_class", "classnames", "workers", "overwrite", "strict",
              "classes", "image_col",
              "caption_col", "label_col", "cluster", "client", "task_bytes"],
    "import_arrays": ["out", "images", "texts", "labels", "paired", "names", "ids", "dtype", "overwrite", "model",
                      "pretrained", "dataset", "codec", "chunk_rows"],
    "metrics.iimm": ["images", "texts", "labels"], "metrics.iimm_inter": ["images", "texts", "labels"],
    "metrics.iimm_intra": ["images"], "metrics.acs": ["images", "texts", "labels"],
    "metrics.modality_gap": ["images", "texts"],
    "metrics.modality_silhouette": ["images", "texts", "metric", "sample_size", "seed", "device"],
    "metrics.silhouette": ["points", "labels", "metric", "sample_size", "random_state"], "metrics.zeroshot_accuracy": ["images", "texts", "labels", "k"],
    "metrics.recall_at_k": ["images", "texts", "k", "direction"],
}


@pytest.mark.parametrize("name", sorted(PUBLIC_SIGNATURES))
def test_public_functions_have_real_signatures(name):
    """``help(embedx.X)`` and tab completion see each public function's own parameters: a plain function (not a
    callable module), no ``*args``/``**kwargs`` standing in for them, the documented names in order."""
    import inspect
    import pydoc

    f = embedx
    for part in name.split("."):
        f = getattr(f, part)
    assert inspect.isfunction(f), f"embedx.{name} is {type(f).__name__}, not a function"
    sig = inspect.signature(f)
    assert not [p for p in sig.parameters.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)], sig
    assert list(sig.parameters) == PUBLIC_SIGNATURES[name]
    short = name.split(".")[-1]
    assert f"{short}{sig}" in pydoc.render_doc(f, renderer=pydoc.plaintext)  # what help() prints
    assert f.__doc__ and f.__doc__.strip()
