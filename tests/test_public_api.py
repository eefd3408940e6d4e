"""The public Python API as pandas and scikit-learn users expect it: every name of ``embedx.__all__`` imports with a
real signature and a docstring, ``dir(embedx)`` is that API, every call returns one ``Result`` type (a mapping of
scores that ``pd.Series``/``pd.DataFrame`` take), bad input is a ``ValueError``, one string stands for a list of
names, ``import_arrays`` takes COCO-style ids, and the array metrics take sklearn's options (checked against
sklearn and numpy float64 brute force)."""
import importlib
import inspect
import json
import math
import types

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import silhouette_score

import embedx
from embedx import metrics
from embedx.errors import EmbedxError
from tests.conftest import invoke

#: parameters gathered as *args/**kwargs, each named in the function's docstring
DOCUMENTED_VARARGS: dict[str, set] = {"registry.register": {"options"}}


def _public_callables():
    """(qualified name, object) of every public name of ``embedx`` and of its public modules' own functions."""
    out = []
    for name in embedx.__all__:
        obj = getattr(embedx, name)  # imports it
        out.append((name, obj))
        if isinstance(obj, types.ModuleType):
            for sub in getattr(obj, "__all__", None) or [n for n in vars(obj) if not n.startswith("_")]:
                f = getattr(obj, sub)
                if inspect.isfunction(f) and f.__module__ == obj.__name__:
                    out.append((f"{name}.{sub}", f))
    return out


@pytest.mark.parametrize("name, obj", _public_callables(), ids=[n for n, _ in _public_callables()])
def test_every_public_name_has_a_real_signature_and_a_docstring(name, obj):
    assert (obj.__doc__ or "").strip(), f"embedx.{name} has no docstring"
    if isinstance(obj, (str, types.ModuleType)):  # __version__; metrics and registry (their functions: below)
        return
    sig = inspect.signature(obj)
    varargs = {p.name for p in sig.parameters.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    assert varargs <= DOCUMENTED_VARARGS.get(name, set()), f"embedx.{name}{sig}"
    assert all(f"**{v}" in obj.__doc__ or f"*{v}" in obj.__doc__ for v in varargs), name


def test_dir_lists_the_public_api_and_no_internal_module():
    names = dir(embedx)
    assert names == sorted(embedx.__all__)
    assert {"import_arrays", "open", "registry", "ArrayRows", "Result", "measure", "drift"} <= set(names)
    store = importlib.import_module("embedx.store")  # an internal module, imported: still not listed
    assert not {"api", "store", "engine", "constraints", "_lazy", "errors"} & set(dir(embedx))
    assert store.Store is embedx.Store and embedx.store is store  # internal modules stay importable by name


def test_embedx_error_is_a_value_error(rng):
    assert issubclass(EmbedxError, ValueError)
    x, t, y = rng.normal(size=(20, 4)), rng.normal(size=(3, 4)), rng.integers(0, 3, 20)
    with pytest.raises(ValueError, match="unknown metric 'nope'") as e:
        embedx.measure((x, t, y), metrics="nope", progress=False)
    assert e.value.param == "metrics"
    with pytest.raises(ValueError):  # sklearn's habit: a bad argument is a ValueError
        metrics.silhouette(x, np.zeros(20))


# -- stores for the calls ----------------------------------------------------------------------------------------
@pytest.fixture
def stores(tmp_path, rng):
    """Two class stores of the same 90 samples (after = before moved a little) and a paired store."""
    x = rng.normal(size=(90, 8)).astype(np.float32)
    t = rng.normal(size=(4, 8)).astype(np.float32)
    y = rng.integers(0, 4, 90)
    a, b, p = (str(tmp_path / f"{k}.zarr") for k in "abp")
    embedx.import_arrays(a, x, t, y, dtype="float32")
    embedx.import_arrays(b, x + 0.2 * rng.normal(size=x.shape).astype(np.float32), t, y, dtype="float32")
    embedx.import_arrays(p, x, x[::-1] + 0.5 * rng.normal(size=x.shape).astype(np.float32), dtype="float32")
    return types.SimpleNamespace(a=a, b=b, p=p, x=x, t=t, y=y)


def test_every_call_returns_a_result_that_pandas_takes(stores):
    m1 = embedx.measure(stores.a, progress=False)
    m2 = embedx.measure(stores.b, progress=False)
    tr = embedx.transfer(stores.a, progress=False)
    dr = embedx.drift(stores.a, stores.b, metrics=["acs", "gap"])
    im = embedx.import_arrays(stores.a + "-copy.zarr", stores.x, stores.t, stores.y)
    for r, kind in ((m1, "measure"), (tr, "transfer"), (dr, "drift"), (im, "import")):
        assert isinstance(r, embedx.Result) and r.kind == kind
        assert dict(r) == {k: r[k] for k in r} and list(r.values()) == [r[k] for k in r] and len(r) == len(dict(r))
        assert isinstance(r.timings, dict) and isinstance(r.info, dict) and isinstance(r.provenance, dict)
        assert r.provenance["embedx_version"] == embedx.__version__ and r.info["n_images"] == 90
        json.dumps(r.to_dict())
        assert len(repr(r)) < 200 and repr(r).startswith(f"Result[{kind}](")
    # the mapping holds the scores alone: no counts, no nested timings
    assert not {"n_images", "n_texts", "dim", "timings_s", "ties", "integrity"} & set(m1)
    assert set(m1) == set(embedx.registry.names("measure", defaults_only=True)) & set(m1) and "acs" in m1
    assert "n_images" not in m1 and m1.info["dim"] == 8 and m1.info["store"] == stores.a
    assert m1.provenance["stores"]["store"]["generation"] == embedx.open(stores.a).meta["generation"]
    assert "stream_pass" in m1.timings and all(v >= 0 for v in m1.timings.values())
    with pytest.raises(KeyError, match="in .info"):
        m1["n_images"]

    s = pd.Series(m1)
    assert s.to_dict() == pytest.approx(dict(m1), nan_ok=True)
    df = pd.DataFrame([m1, m2])
    # every score a column (pandas < 3 sorts the columns of Mappings that are not dicts; pandas 3 keeps their order)
    assert sorted(df.columns) == sorted(m1) and df.shape == (2, len(m1))
    assert df.loc[1, "acs"] == pytest.approx(m2["acs"])
    frame = pd.concat([m1.to_frame(), m2.to_frame()])
    assert list(frame.index) == [stores.a, stores.b] and frame.loc[stores.b, "gap"] == pytest.approx(m2["gap"])
    assert m1.to_series().name == stores.a and m1.to_series()["acs"] == m1["acs"]
    assert pd.DataFrame([tr]).loc[0, "hscore"] == tr["hscore"]
    assert set(tr.timings) >= set(tr) and dict(tr) == dict(embedx.transfer(stores.a, progress=False))

    # drift: the drift statistics and each measure's change; the rest in info, all of it in to_dict()
    assert {"displacement_mean", "cka_linear", "knn_overlap", "delta_acs", "delta_gap"} <= set(dr)
    assert dr["delta_acs"] == pytest.approx(m2["acs"] - m1["acs"], abs=1e-12)
    assert dr.info["before"]["acs"] == pytest.approx(m1["acs"]) and dr.info["store"] == stores.b
    assert dr.to_dict()["delta"]["acs"] == dr["delta_acs"] and "measures" in dr.timings
    # import: no scores; where the rows went and what they are
    assert len(im) == 0 and im.info["store"] == stores.a + "-copy.zarr" and im.info["mode"] == "classes"
    assert im.to_dict()["rows_committed"] == 90 and im.provenance["stores"]["store"]["generation"]


def test_embed_returns_the_same_result_type(tmp_path):
    out = str(tmp_path / "e.zarr")
    r = embedx.embed(out, "synthetic:8", "embedx-tiny", device="cpu", progress=False)
    assert isinstance(r, embedx.Result) and r.kind == "embed" and len(r) == 0
    assert (r.info["store"], r.info["n_images"], r.info["model"]) == (out, 8, "embedx-tiny")
    assert r.to_dict()["complete"] and r.provenance["stores"]["store"]["generation"] == embedx.open(out).meta[
        "generation"]


def test_to_dict_is_the_json_the_cli_writes(stores, tmp_path):
    r = embedx.measure(stores.a, metrics=["acs", "gap", "zeroshot_top1"], progress=False)
    d = json.loads(invoke("measure", stores.a, "--json", "--metrics", "acs,gap,zeroshot_top1").stdout)
    mine = r.to_dict()
    assert list(mine) == list(d)  # the same keys in the same order
    for k in ("acs", "gap", "zeroshot_top1", "n_images", "dim", "ties", "integrity", "stores", "schema", "options"):
        assert mine[k] == d[k], k
    assert set(mine["timings_s"]) == set(d["timings_s"])
    dr = embedx.drift(stores.a, stores.b, metrics="acs")
    cli = json.loads(invoke("drift", stores.a, stores.b, "--json", "--metrics", "acs").stdout)
    assert set(dr.to_dict()) == set(cli) and dr.to_dict()["cka_linear"] == cli["cka_linear"]


def test_one_string_is_one_name_or_several_comma_separated(stores):
    one = embedx.measure(stores.a, metrics="gap", progress=False)
    assert list(one) == ["gap"] and one["gap"] == embedx.measure(stores.a, metrics=["gap"], progress=False)["gap"]
    assert list(embedx.measure(stores.a, metrics="acs,gap", progress=False)) == ["acs", "gap"]
    assert list(embedx.measure(stores.a, metrics=" acs , gap ", progress=False)) == ["acs", "gap"]
    assert list(embedx.transfer(stores.a, scores="hscore", progress=False)) == ["hscore"]
    assert list(embedx.drift(stores.a, stores.b, metrics="gap").info["before"])[0] == "gap"
    from embedx.measures import compute  # the library under it too

    assert list(compute(embedx.open(stores.a), "gap", progress=False)) == ["gap"]
    d = embedx.drift(stores.a, stores.b, metrics="acs", others=f"again={stores.a}:{stores.b}")  # one pair
    assert list(d.info["forgetting"]["tasks"]) == ["again"] and "forgetting_mean_delta" in d


# -- import_arrays ids -------------------------------------------------------------------------------------------
def _recall_reference(x, t, item, k):
    """Brute-force float64 recall@k with several captions per image (``item[j]``: caption j's image index)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    s = xn @ tn.T  # distinct images x captions
    i2t = np.mean([(s[u] > s[u, item == u].max()).sum() < k for u in range(len(x))])
    t2i = np.mean([(s[:, j] > s[item[j], j]).sum() < k for j in range(len(t))])
    return i2t, t2i


def test_import_arrays_takes_coco_style_ids(tmp_path, rng):
    m, per = 15, 5
    images = rng.normal(size=(m, 12)).astype(np.float32)
    item = rng.permutation(np.repeat(np.arange(m), per))  # caption j shows image item[j], captions shuffled
    texts = (images[item] + 0.8 * rng.normal(size=(m * per, 12))).astype(np.float32)
    ids = np.array([f"coco-{v:03d}" for v in item])
    _, first = np.unique(item, return_index=True)
    order = item[np.sort(first)]  # the images in order of first appearance of their id
    out = str(tmp_path / "coco.zarr")
    r = embedx.import_arrays(out, images[order], texts, ids=ids, dtype="float32")
    s = embedx.open(out)
    assert (s.n_images, s.n_texts, r.info["mode"]) == (m * per, m * per, "paired")
    np.testing.assert_array_equal(s.ids(), ids)
    np.testing.assert_array_equal(s.images(), images[item])  # each caption's row holds its image
    # one row per caption given (an image repeated beside each caption): the same store
    embedx.import_arrays(str(tmp_path / "rows.zarr"), images[item], texts, ids=list(ids), dtype="float32")
    np.testing.assert_array_equal(embedx.open(str(tmp_path / "rows.zarr")).images(), s.images())

    got = embedx.measure(out, metrics="i2t_recall@1,i2t_recall@5,t2i_recall@1,t2i_recall@5", progress=False)
    for k in (1, 5):
        i2t, t2i = _recall_reference(images.astype(np.float64), texts.astype(np.float64), item, k)
        assert got[f"i2t_recall@{k}"] == pytest.approx(i2t, abs=1e-12) and got[f"t2i_recall@{k}"] == pytest.approx(
            t2i, abs=1e-12)
    # without ids every row is its own image: a different (lower) i2t recall
    plain = embedx.import_arrays(str(tmp_path / "plain.zarr"), images[item], texts, dtype="float32")
    assert embedx.measure(plain.info["store"], metrics="i2t_recall@5", progress=False)["i2t_recall@5"] \
        < got["i2t_recall@5"]

    with pytest.raises(EmbedxError, match="distinct ids") as e:
        embedx.import_arrays(str(tmp_path / "bad.zarr"), images[:-1], texts, ids=ids)
    assert e.value.param == "ids"
    with pytest.raises(EmbedxError, match="one id per row") as e:
        embedx.import_arrays(str(tmp_path / "bad.zarr"), images[order], texts, ids=ids[:-1])
    assert e.value.param == "ids"
    with pytest.raises(EmbedxError, match="give ids") as e:
        embedx.import_arrays(str(tmp_path / "bad.zarr"), images[order], texts)


# -- metrics: sklearn's options, any k ---------------------------------------------------------------------------
def _topk_reference(x, t, y, k):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    lab = y >= 0
    s = xn[lab] @ tn.T
    true = s[np.arange(lab.sum()), y[lab]]
    return float(((s > true[:, None]).sum(1) < k).mean())


def test_zeroshot_accuracy_any_k_matches_float64_brute_force(rng):
    c = 9
    x, t = rng.normal(size=(250, 16)), rng.normal(size=(c, 16))
    y = rng.integers(-1, c, 250)
    t[: c // 2] += 0.3 * x[:c // 2]  # not a uniform guess
    got = [metrics.zeroshot_accuracy(x, t, y, k=k) for k in range(1, c + 2)]
    ref = [_topk_reference(x, t, y, k) for k in range(1, c + 2)]
    assert got == pytest.approx(ref, abs=1e-12)
    assert got[-2] == got[-1] == 1.0 and all(a <= b for a, b in zip(got, got[1:]))
    assert metrics.zeroshot_accuracy(x, t, y, k=5) == embedx.measure((x, t, y), "zeroshot_top5",
                                                                       progress=False)["zeroshot_top5"]
    # identical texts tie: the lower index ranks first (as argmax), whatever the rounding
    t2 = np.vstack([t, t[2:3]])  # class 9 is a copy of class 2
    y2 = np.where(y == 2, 9, y)
    lab = y2 >= 0
    s = (x / np.linalg.norm(x, axis=1, keepdims=True))[lab] @ (t2 / np.linalg.norm(t2, axis=1, keepdims=True)).T
    true = s[np.arange(lab.sum()), y2[lab]][:, None]
    copy = y2[lab] == 9  # their class 2 ties with 9 exactly and ranks ahead (lower index); 9 itself: no rival
    rank = np.where(copy, (np.delete(s, [2, 9], 1) > true).sum(1) + 1, (s > true).sum(1))
    assert metrics.zeroshot_accuracy(x, t2, y2, k=3) == pytest.approx(float((rank < 3).mean()), abs=1e-12)
    with pytest.raises(EmbedxError) as e:
        metrics.zeroshot_accuracy(x, t, y, k=0)
    assert e.value.param == "k"


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_silhouette_matches_sklearn_with_its_options(rng, metric):
    x = rng.normal(size=(300, 10)) + np.repeat(rng.normal(size=(4, 10)) * 1.5, 75, axis=0)
    labels = np.array(["a", "b", "c", "d"])[np.repeat(np.arange(4), 75)]
    labels[:3] = "solo-" + np.array(["x", "y", "z"])  # singleton clusters score 0, as sklearn's
    tol = 1e-6 if metric == "euclidean" else 1e-10
    assert metrics.silhouette(x, labels, metric=metric) == pytest.approx(
        silhouette_score(x, labels, metric=metric), abs=tol)
    for seed in (0, 7):
        got = metrics.silhouette(x, labels, metric=metric, sample_size=120, random_state=seed)
        ref = silhouette_score(x, labels, metric=metric, sample_size=120, random_state=seed)
        assert got == pytest.approx(ref, abs=tol), seed
    assert metrics.silhouette(x, labels, metric=metric, sample_size=120, random_state=0) != pytest.approx(
        metrics.silhouette(x, labels, metric=metric, sample_size=120, random_state=7), abs=1e-9)
    with pytest.raises(EmbedxError) as e:
        metrics.silhouette(x, labels, metric="manhattan")
    assert e.value.param == "metric"
    with pytest.raises(EmbedxError) as e:
        metrics.silhouette(x, labels, sample_size=1)
    assert e.value.param == "sample_size"
    assert math.isfinite(metrics.silhouette(x, labels, metric=metric, sample_size=10_000, random_state=1))
