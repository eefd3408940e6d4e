"""Every command on ``s3://`` stores, against a real S3-compatible server (moto in server mode on 127.0.0.1, signed
requests enforced; tests/s3server.py): import and open, info and verify with the crc32c/content inventory,
measure/transfer/drift equal to the same stores on local disk, embed and its resume, measure on a Dask cluster
whose workers read S3 themselves, and one-line errors for a missing bucket, a missing store and refused
credentials."""
import json

import numpy as np
import pytest
import zarr

import embedx
from embedx.store import Store
from tests.conftest import assert_one_line_error, invoke, run_embedx
from tests.s3server import s3_server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(str(tmp_path_factory.mktemp("aws"))) as server:
        yield server


def _data(rng, n=600, d=24, c=6):
    x = rng.standard_normal((n, d)).astype(np.float32)
    t = rng.standard_normal((c, d)).astype(np.float32)
    y = rng.integers(0, c, n).astype(np.int32)
    return x, t, y


@pytest.fixture(scope="module")
def pair(s3, tmp_path_factory):
    """The same two stores (before/after: the after rows moved a little) on S3 and on local disk."""
    rng = np.random.default_rng(1234)
    x, t, y = _data(rng)
    x2 = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    local = tmp_path_factory.mktemp("local")
    out = {}
    for name, rows in (("before", x), ("after", x2)):
        for where, path in (("s3", s3.url(f"pair/{name}.zarr")), ("local", str(local / f"{name}.zarr"))):
            embedx.import_arrays(path, rows, t, y, names=[f"class {k}" for k in range(len(t))], model="m",
                                 dataset="d", chunk_rows=64)
            out[where, name] = path
    return out


def _json(r):
    assert r.exit_code == 0, r.output + r.stderr
    return json.loads(r.stdout)


def _without_paths(obj, paths):
    """``obj`` without the values naming one of ``paths``, without timings and the provenance of the run and store
    (time, generation id): they differ; numbers must not."""
    if isinstance(obj, dict):
        return {k: _without_paths(v, paths) for k, v in obj.items()
                if k not in ("timings_s", "seconds", "created", "generation") and not (isinstance(v, str) and any(p in v for p in paths))}
    if isinstance(obj, list):
        return [_without_paths(v, paths) for v in obj]
    return obj


def test_import_open_info_verify(s3, rng):
    x, t, y = _data(rng, n=500)
    url = s3.url("roundtrip/s.zarr")
    meta = embedx.import_arrays(url, x, t, y, names=[f"c{k}" for k in range(len(t))], dtype="float32",
                                chunk_rows=48)
    assert meta.to_dict()["complete"] and meta.info["store"] == url
    s = embedx.open(url)
    np.testing.assert_array_equal(s.images(), x)  # float32, as given
    np.testing.assert_array_equal(s.labels(), y)
    np.testing.assert_array_equal(s.texts(), t)
    assert list(s.text_names()) == [f"c{k}" for k in range(len(t))] and len(s.ids()) == 500
    # the inventory is recorded behind the URL too: crc32c of every chunk file, content hash of every chunk
    inv = s.meta["integrity"]
    assert len(inv["arrays"]["images/embeddings"]) == 11 and len(inv["content"]["arrays"]["images/labels"]) == 11
    for _ in s.iter_images(block_rows=96):
        pass
    assert s.chunks_verified()["images/embeddings"] == list(range(11))  # every read checked its chunks
    d = _json(invoke("info", url, "--json"))
    assert d["complete"] and d["n_images"] == 500 and d["size_bytes"] > x.nbytes
    assert d["integrity_check"]["ok"] and "chunk contents" in d["integrity"]
    v = _json(invoke("verify", url, "--json"))
    assert v["ok"] and v["inventory"] and v["chunks_checked"] == sum(map(len, inv["arrays"].values()))
    # overwrite refuses, --overwrite replaces; something that is not a store is never written over
    with pytest.raises(embedx.errors.StoreError, match="already holds a complete store"):
        embedx.import_arrays(url, x, t, y)
    import fsspec

    fs, base = fsspec.core.url_to_fs(s3.url("not-a-store"))
    fs.pipe(f"{base}/notes.txt", b"mine")
    with pytest.raises(embedx.errors.StoreError, match="not an embedx store"):
        embedx.import_arrays(s3.url("not-a-store"), x, t, y)
    assert fs.cat(f"{base}/notes.txt") == b"mine"


def test_damage_on_s3_is_found(s3, rng):
    """A chunk object overwritten with other bytes of its size, and one deleted: verify lists the first, every
    read refuses it; opening refuses the store without the second."""
    import fsspec

    x, t, y = _data(rng, n=300)
    url = s3.url("damaged/s.zarr")
    embedx.import_arrays(url, x, t, y, chunk_rows=64)
    fs, base = fsspec.core.url_to_fs(url)
    chunk = f"{base}/images/embeddings/c/2/0"
    good = fs.cat(chunk)
    fs.pipe(chunk, good[::-1])
    r = invoke("verify", url)
    assert r.exit_code == 2 and "images/embeddings chunk 2 (rows 128..191): checksum mismatch" in r.stdout
    r = invoke("measure", url, "--json")
    assert_one_line_error(r.exit_code, r.stderr, "images/embeddings chunk 2", "content checksum mismatch")
    fs.pipe(chunk, good)
    assert invoke("verify", url).exit_code == 0
    fs.rm(f"{base}/images/labels/c/1")
    rc, _, err = run_embedx("info", url)
    assert_one_line_error(rc, err, "images/labels chunk 1 (rows 64..127) is missing")


def test_measure_transfer_drift_on_s3_equal_local(pair):
    paths = list(pair.values())
    for args in (["measure", "{before}", "--json"], ["transfer", "{before}", "--json"],
                 ["drift", "{before}", "{after}", "--json", "--knn-k", "5"]):
        got = {}
        for where in ("s3", "local"):
            got[where] = _json(invoke(*[a.format(before=pair[where, "before"], after=pair[where, "after"])
                                        for a in args]))
        assert _without_paths(got["s3"], paths) == _without_paths(got["local"], paths), args[0]
    assert got["s3"]["before"]["acs"] == got["local"]["before"]["acs"]  # the comparison saw numbers


def test_measure_on_cluster_reads_s3(pair):
    """``--cluster local:2``: worker processes (started after the server, so with its environment) open the S3
    store themselves (it is nowhere else); the numbers equal the in-process ones."""
    url = pair["s3", "before"]
    here = _json(invoke("measure", url, "--json"))
    there = _json(invoke("measure", url, "--json", "--cluster", "local:2"))
    numbers = {k for k, v in here.items() if isinstance(v, float)}
    assert {"acs", "gap", "iimm", "silhouette_euclidean"} <= numbers
    for k in numbers:
        assert there[k] == pytest.approx(here[k], rel=1e-9, abs=1e-12), k


TINY = ["embed", "-m", "embedx-tiny", "--data", "digits", "--limit", "64", "--batch-size", "32", "--seed", "3"]


def test_embed_to_s3_and_resume(s3):
    url = s3.url("embed/s.zarr")
    r = invoke(*TINY, "--out", url)
    assert r.exit_code == 0, r.output + r.stderr
    whole = Store(url)
    rows, labels, ids = whole.images(), whole.labels(), list(whole.ids())
    assert whole.n_images == 64 and whole.meta["integrity"]
    # as if killed after its first batch: the commit marker says 32 rows
    g = zarr.open_group(url, mode="r+")
    g.attrs["embedx"] = dict(g.attrs["embedx"], complete=False, rows_committed=32, source_pos=32)
    d = _json(invoke("info", url, "--json"))
    assert not d["complete"] and d["rows_committed"] == 32
    r = invoke(*TINY, "--out", url)
    assert r.exit_code == 0 and "resumed at item 32" in r.stdout, r.output + r.stderr
    s = Store(url)
    np.testing.assert_array_equal(s.images(), rows)
    np.testing.assert_array_equal(s.labels(), labels)
    assert list(s.ids()) == ids and s.meta["generation"] == whole.generation
    assert invoke("verify", url).exit_code == 0
    r = invoke(*TINY, "--out", url)
    assert_one_line_error(r.exit_code, r.stderr, "already complete", "--overwrite")


def test_errors_are_one_line(s3, pair, tmp_path):
    url = pair["s3", "before"]
    rc, out, err = run_embedx("info", "s3://embedx-no-such-bucket/s.zarr")
    assert_one_line_error(rc, err, "no store at s3://embedx-no-such-bucket/s.zarr", "bucket", "does not exist")
    rc, out, err = run_embedx("measure", s3.url("no/such/store.zarr"))
    assert_one_line_error(rc, err, "no store at")
    rc, out, err = run_embedx("verify", url, env=s3.bad_credentials)
    assert_one_line_error(rc, err, "access denied", "credentials")
    np.save(tmp_path / "x.npy", np.eye(4, dtype=np.float32))
    np.save(tmp_path / "y.npy", np.arange(4))
    rc, out, err = run_embedx("import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "x.npy", "--labels",
                              tmp_path / "y.npy", "--out", "s3://embedx-no-such-bucket/s.zarr")
    assert_one_line_error(rc, err, "bucket does not exist")
    r = invoke("drift", url, s3.url("no/such/after.zarr"))
    assert_one_line_error(r.exit_code, r.stderr, "no store at")


def test_import_and_export_dumps_on_s3(s3, tmp_path):
    """`embedx import --from clip-retrieval|datacomp s3://...`: the dump read through fsspec (headers, ranged row
    reads, parquet, npz) gives the store the same dump gives from local disk; `embedx export ... --out s3://...`
    round-trips; a missing partition is one line."""
    import fsspec

    from embedx.formats.dumps import import_dump
    from tests.test_dumps import _same_store, clip_retrieval_dir, datacomp_dir

    rng = np.random.default_rng(7)
    clip_retrieval_dir(tmp_path / "cr", rng, sizes=(37, 21, 50), d=24)
    datacomp_dir(tmp_path / "dc", rng)
    fs = fsspec.filesystem("s3")
    for name in ("cr", "dc"):
        fs.put(str(tmp_path / name), f"{s3.bucket}/dumps/{name}", recursive=True)
    for kind, name in (("clip-retrieval", "cr"), ("datacomp", "dc")):
        local, remote = str(tmp_path / f"{name}-local.zarr"), str(tmp_path / f"{name}-s3.zarr")
        import_dump(local, kind, str(tmp_path / name), chunk_rows=16)
        r = invoke("import", "--from", kind, s3.url(f"dumps/{name}"), "--out", remote, "--chunk-rows", "16")
        assert r.exit_code == 0, r.output + r.stderr
        _same_store(Store(local), Store(remote))
        assert Store(remote).meta["source"]["path"] == s3.url(f"dumps/{name}")
    # and back out to S3: export -> import from s3:// round-trips byte for byte, --overwrite replaces an export
    src = str(tmp_path / "cr-local.zarr")
    for fmt in ("clip-retrieval", "npy", "parquet"):
        url = s3.url(f"exports/{fmt}")
        r = invoke("export", src, "--format", fmt, "--out", url, "--partition-rows", "40")
        assert r.exit_code == 0, r.output + r.stderr
        assert fs.exists(f"{s3.bucket}/exports/{fmt}/embedx.json")
        back = str(tmp_path / f"back-{fmt}.zarr")
        import_dump(back, fmt, url)
        _same_store(Store(src), Store(back))
    r = invoke("export", src, "--format", "npy", "--out", s3.url("exports/npy"))
    assert_one_line_error(r.exit_code, r.stderr, "not empty", "--overwrite")
    assert invoke("export", src, "--format", "npy", "--out", s3.url("exports/npy"), "--overwrite").exit_code == 0
    fs.rm(f"{s3.bucket}/dumps/cr/img_emb/img_emb_1.npy")
    r = invoke("import", "--from", "clip-retrieval", s3.url("dumps/cr"), "--out", str(tmp_path / "bad.zarr"))
    assert_one_line_error(r.exit_code, r.stderr, "img_emb/img_emb_1.npy is missing")


def test_json_out_to_s3(pair, s3, tmp_path, monkeypatch):
    """``measure --out s3://...`` uploads the JSON (it once wrote a local ``s3:/...`` path); a missing bucket is
    one line."""
    from tests.s3server import clear_fsspec_instances

    monkeypatch.chdir(tmp_path)
    local = pair["local", "before"]
    url = s3.url("reports/m.json")
    r = invoke("measure", local, "--metrics", "acs", "--out", url)
    assert r.exit_code == 0, r.output + r.stderr
    clear_fsspec_instances()
    import boto3

    body = boto3.client("s3", endpoint_url=s3.endpoint).get_object(Bucket=s3.bucket, Key="reports/m.json")["Body"]
    got = json.loads(body.read())
    assert got["acs"] == _json(invoke("measure", local, "--metrics", "acs", "--json"))["acs"]
    assert not (tmp_path / "s3:").exists() and not list(tmp_path.iterdir())  # nothing written here
    r = invoke("measure", local, "--metrics", "acs", "--out", "s3://no-such-bucket-embedx/m.json")
    assert_one_line_error(r, "no-such-bucket-embedx")
