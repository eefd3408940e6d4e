"""One store conformance suite, run unchanged against every storage backend embedx writes stores to: a local folder
and an S3 bucket (moto in server mode on 127.0.0.1, signed requests enforced; tests/s3server.py). Local or URL is
decided once (``embedx.fs.locations``); whatever fast paths a backend takes (direct ``preadv`` chunk reads,
staging and ``renameat2`` placement, the ``flock`` writer lock on a disk; ranged requests and writes in place
behind a URL), the contract is the same: what is written reads back bit for bit, row ranges and blocks alike; the
checksums match the bytes stored and find damage; ``info`` sizes what is there; an export reads back; a killed
write never passes for a store; and the overwrite rules hold.

The stored bytes are looked at independently of embedx: with the filesystem on a disk, with boto3 (not fsspec)
in the bucket.
"""
import io
import json
import os
import uuid

import numpy as np
import pytest

import embedx
from embedx.errors import StoreError
from embedx.formats.dumps import import_dump
from embedx.formats.export import export_store
from embedx.store import Store, StoreWriter
from embedx.store.integrity import verify
from tests.conftest import assert_one_line_error, invoke, run_embedx
from tests.s3server import REGION, s3_server

BACKENDS = ("local", "s3")


class Local:
    """Stores in a folder on this machine's disk."""

    name = "local"

    def __init__(self, root):
        self.root = str(root)

    def path(self, name: str) -> str:
        folder = os.path.join(self.root, uuid.uuid4().hex[:8])
        os.makedirs(folder)
        return os.path.join(folder, name)

    def read(self, path: str, key: str) -> bytes:
        with open(os.path.join(path, key), "rb") as f:
            return f.read()

    def write(self, path: str, key: str, data: bytes) -> None:
        full = os.path.join(path, key)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)

    def delete(self, path: str, key: str) -> None:
        os.remove(os.path.join(path, key))

    def sizes(self, path: str) -> dict:
        """{key: bytes} of every file under ``path``."""
        out = {}
        for root, _, files in os.walk(path):
            for f in files:
                full = os.path.join(root, f)
                out[os.path.relpath(full, path).replace(os.sep, "/")] = os.path.getsize(full)
        return out


class S3Bucket:
    """Stores under a prefix of a bucket of the moto server, looked at with boto3."""

    name = "s3"

    def __init__(self, server):
        import boto3

        self.server = server
        self.client = boto3.session.Session().client("s3", endpoint_url=server.endpoint, region_name=REGION)

    def path(self, name: str) -> str:
        return self.server.url(f"{uuid.uuid4().hex[:8]}/{name}")

    def _key(self, path: str, key: str = "") -> str:
        prefix = path.split("://", 1)[1].split("/", 1)[1].rstrip("/")
        return f"{prefix}/{key}" if key else prefix

    def read(self, path: str, key: str) -> bytes:
        return self.client.get_object(Bucket=self.server.bucket, Key=self._key(path, key))["Body"].read()

    def write(self, path: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.server.bucket, Key=self._key(path, key), Body=data)

    def delete(self, path: str, key: str) -> None:
        self.client.delete_object(Bucket=self.server.bucket, Key=self._key(path, key))

    def sizes(self, path: str) -> dict:
        prefix = self._key(path) + "/"
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.server.bucket, Prefix=prefix):
            out.update({o["Key"][len(prefix):]: o["Size"] for o in page.get("Contents", [])})
        return out


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(str(tmp_path_factory.mktemp("aws"))) as server:
        yield server


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, tmp_path_factory):
    if request.param == "local":
        return Local(tmp_path_factory.mktemp("stores"))
    return S3Bucket(request.getfixturevalue("s3"))


def _data(rng, n=500, d=24, c=6):
    x = rng.standard_normal((n, d)).astype(np.float32)
    t = rng.standard_normal((c, d)).astype(np.float32)
    y = rng.integers(0, c, n).astype(np.int32)
    return x, t, y


NAMES = [f"class {k}" for k in range(6)]


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int.from_bytes(google_crc32c.Checksum(data).digest(), "big")


def _chunk_key(name: str, k: int, ndim: int) -> str:
    return "/".join([name, "c", str(k), *(["0"] * (ndim - 1))])


class TestStoreConformance:
    """The same tests on each backend (``backend`` is parametrized over :data:`BACKENDS`)."""

    def test_import_then_every_read_path_gives_the_rows_back(self, backend, rng):
        x, t, y = _data(rng)
        path = backend.path("s.zarr")
        meta = embedx.import_arrays(path, x, t, y, names=NAMES, dtype="float32", chunk_rows=48).to_dict()
        assert meta["complete"] and meta["rows_committed"] == 500
        s = Store(path)
        assert (s.n_images, s.n_texts, s.dim, s.chunk_rows, str(s.dtype)) == (500, 6, 24, 48, "float32")
        np.testing.assert_array_equal(s.images(), x)
        np.testing.assert_array_equal(s.labels(), y)
        np.testing.assert_array_equal(s.texts(), t)
        assert list(s.text_names()) == NAMES and list(s.ids()) == [str(i) for i in range(500)]
        # a row range across chunk boundaries, random rows, and blocks of whole chunks (both iterators)
        np.testing.assert_array_equal(s.read_rows_into("images/embeddings", 37, np.empty((101, 24), np.float32)),
                                      x[37:138])
        rows = rng.permutation(500)[:40]
        np.testing.assert_array_equal(s.images(rows), x[rows])
        np.testing.assert_array_equal(s.read_texts(2, 5), t[2:5])
        for reuse in (False, True):
            got, labels = [], []
            for start, block, lab in s.iter_images(block_rows=96, with_labels=True, reuse=reuse):
                assert start == 96 * len(got)
                got.append(block.copy())
                labels.append(lab.copy())
            np.testing.assert_array_equal(np.concatenate(got), x)
            np.testing.assert_array_equal(np.concatenate(labels), y)
        assert s.chunks_verified()["images/embeddings"] == list(range(11))  # every whole-chunk read was checked

    def test_paired_store_reads_its_captions(self, backend, rng):
        x, t, _ = _data(rng, n=130)
        t = rng.standard_normal(x.shape).astype(np.float32)
        path = backend.path("paired.zarr")
        captions = [f"caption {i}" for i in range(130)]
        embedx.import_arrays(path, x, t, names=captions, dtype="float32", chunk_rows=32)
        s = Store(path)
        assert s.paired and s.n_texts == 130
        np.testing.assert_array_equal(s.texts(), t)
        np.testing.assert_array_equal(s.labels(), np.arange(130))
        assert list(s.text_names()) == captions

    def test_checksums_match_the_stored_bytes_and_find_damage(self, backend, rng):
        x, t, y = _data(rng, n=300)
        path = backend.path("s.zarr")
        embedx.import_arrays(path, x, t, y, names=NAMES, chunk_rows=64)
        inv = Store(path).meta["integrity"]
        assert inv["algorithm"] == "crc32c" and len(inv["arrays"]["images/embeddings"]) == 5
        for name, crcs in inv["arrays"].items():  # the inventory is the crc32c of the bytes as stored
            ndim = 2 if name.endswith("embeddings") else 1
            assert [_crc32c(backend.read(path, _chunk_key(name, k, ndim))) for k in range(len(crcs))] == crcs, name
        v = verify(path)
        assert v["ok"] and v["inventory"] and v["chunks_checked"] == sum(map(len, inv["arrays"].values())), v
        # a chunk overwritten with other bytes of its size: verify names it, every read of it is refused
        key = _chunk_key("images/embeddings", 2, 2)
        good = backend.read(path, key)
        backend.write(path, key, good[::-1])
        assert verify(path)["problems"][0].startswith(
            "images/embeddings chunk 2 (rows 128..191): checksum mismatch"), verify(path)
        with pytest.raises(StoreError, match=r"images/embeddings chunk 2 \(rows 128..191\): content checksum mismatch"):
            Store(path).images()
        backend.write(path, key, good)
        assert verify(path)["ok"]
        # a chunk file gone: the store does not open, in one line
        backend.delete(path, _chunk_key("images/labels", 1, 1))
        with pytest.raises(StoreError, match=r"images/labels chunk 1 \(rows 64..127\) is missing; the store is damaged"):
            Store(path)
        rc, _, err = run_embedx("info", path)
        assert_one_line_error(rc, err, "images/labels chunk 1 (rows 64..127) is missing")

    def test_info_sizes_what_is_stored(self, backend, rng):
        x, t, y = _data(rng, n=200)
        path = backend.path("s.zarr")
        embedx.import_arrays(path, x, t, y, names=NAMES, chunk_rows=64, model="m", dataset="d")
        info = Store(path).info()
        stored = backend.sizes(path)
        assert info["size_bytes"] == sum(stored.values()) > x.nbytes // 2  # float16 rows
        assert {"zarr.json", "images/embeddings/c/3/0", "texts/names/c/0"} <= set(stored)
        assert (info["complete"], info["n_images"], info["n_texts"], info["model"], info["dataset"]) == \
            (True, 200, 6, "m", "d")
        r = invoke("info", path, "--json")
        assert r.exit_code == 0, r.output
        cli = json.loads(r.stdout)
        assert cli["size_bytes"] == info["size_bytes"] and cli["integrity_check"]["ok"]
        assert cli["integrity"] == info["integrity"] and "chunk contents" in cli["integrity"]

    def test_export_reads_back_and_imports_again(self, backend, rng):
        x, t, y = _data(rng, n=260)
        path = backend.path("s.zarr")
        embedx.import_arrays(path, x, t, y, names=NAMES, dtype="float32", chunk_rows=64)
        out = backend.path("export")
        summary = export_store(path, "npy", out)
        assert summary["rows"] == 260 and summary["format"] == "npy"
        assert json.loads(backend.read(out, "embedx.json"))["rows"] == 260  # written last: the export is whole
        np.testing.assert_array_equal(np.load(io.BytesIO(backend.read(out, "images.npy"))), x)
        np.testing.assert_array_equal(np.load(io.BytesIO(backend.read(out, "texts.npy"))), t)
        np.testing.assert_array_equal(np.load(io.BytesIO(backend.read(out, "labels.npy"))), y)
        with pytest.raises(embedx.errors.EmbedxError, match="exists and is not empty; pass overwrite=True"):
            export_store(path, "npy", out)
        export_store(path, "npy", out, overwrite=True)
        again = backend.path("again.zarr")
        meta = import_dump(again, "npy", out)  # the dump reader: direct reads on a disk, ranged reads behind a URL
        assert meta["complete"] and meta["source"]["format"] == "npy"
        s = Store(again)
        np.testing.assert_array_equal(s.images(), x)
        np.testing.assert_array_equal(s.labels(), y)
        assert list(s.text_names()) == NAMES

    @pytest.mark.parametrize("point", ["create:arrays", "commit:data"])
    def test_a_killed_write_never_passes_for_a_store(self, backend, rng, tmp_path, point):
        """A writer SIGKILLed while creating the store or after its first rows: what is at the path is refused in
        one line (nothing there, an unfinished store or an interrupted creation), and a rerun with --overwrite
        writes the whole store."""
        x, t, y = _data(rng, n=300)
        files = []
        for name, a in (("x", x), ("t", t), ("y", y)):
            np.save(tmp_path / f"{name}.npy", a)
            files.append(str(tmp_path / f"{name}.npy"))
        path = backend.path("s.zarr")
        args = ["import", "--images", files[0], "--texts", files[1], "--labels", files[2], "--chunk-rows", "64",
                "--dtype", "float32", "--out", path]
        rc, _, err = run_embedx(*args, env={"EMBEDX_CRASH_AT": point})
        assert rc == -9, err
        with pytest.raises(StoreError) as e:
            Store(path)
        assert len(str(e.value).splitlines()) == 1
        assert any(w in str(e.value) for w in ("no store at", "is unfinished", "creation was interrupted")), e.value
        rc, out, err = run_embedx("info", path)  # an unfinished store is shown as one; anything else refused
        if "unfinished" in str(e.value):
            assert rc == 0 and "UNFINISHED (" in out and "rerun the import with --overwrite" in out, out + err
        else:
            assert_one_line_error(rc, err, path)
        rc, _, err = run_embedx(*args, "--overwrite")
        assert rc == 0, err
        np.testing.assert_array_equal(Store(path).images(), x)
        assert verify(path)["ok"]

    def test_an_unfinished_store_is_refused_until_finished(self, backend, rng):
        x, t, y = _data(rng, n=300)
        path = backend.path("s.zarr")
        w = StoreWriter.create(path, n_rows=300, dim=24, meta={"model": "m", "dataset": "d", "mode": "classes"},
                               n_texts=6, dtype="float32", chunk_rows=64, background=False)
        w.write_texts(t, NAMES)
        w.append(x[:128], y[:128], [str(i) for i in range(128)])
        w.commit(128)
        w.close()
        with pytest.raises(StoreError, match=r"is unfinished \(128 of at most 300 rows committed\); rerun the "
                                             r"command that wrote it to resume"):
            Store(path)
        part = Store(path, allow_partial=True)
        assert part.n_images == 128 and not part.complete
        np.testing.assert_array_equal(part.images(), x[:128])
        with pytest.raises(StoreError, match="already holds an unfinished store; pass overwrite=True"):
            embedx.import_arrays(path, x, t, y)
        w = StoreWriter.resume(path, {"model": "m", "dataset": "d", "mode": "classes"}, background=False)
        w.append(x[128:], y[128:], [str(i) for i in range(128, 300)])
        w.commit(300)
        w.finalize()
        np.testing.assert_array_equal(Store(path).images(), x)
        assert verify(path)["ok"]

    def test_overwrite_rules(self, backend, rng):
        x, t, y = _data(rng, n=200)
        path = backend.path("s.zarr")
        embedx.import_arrays(path, x, t, y, names=NAMES, dtype="float32", chunk_rows=64)
        first = Store(path).generation
        x2 = -x
        with pytest.raises(StoreError, match="already holds a complete store; pass overwrite=True to replace it"):
            embedx.import_arrays(path, x2, t, y)
        np.testing.assert_array_equal(Store(path).images(), x)  # refused: nothing changed
        embedx.import_arrays(path, x2, t, y, dtype="float32", chunk_rows=64, overwrite=True)
        s = Store(path)
        assert s.generation != first
        np.testing.assert_array_equal(s.images(), x2)
        assert verify(path)["ok"]
        # something that is not a store is never written over, with or without overwrite
        other = backend.path("mine")
        backend.write(other, "notes.txt", b"mine")
        for overwrite in (False, True):
            with pytest.raises(StoreError, match="exists and is not an embedx store; refusing to write over it"):
                embedx.import_arrays(other, x, t, y, overwrite=overwrite)
        assert backend.read(other, "notes.txt") == b"mine"
        with pytest.raises(StoreError, match="no store at"):
            Store(backend.path("nothing.zarr"))
