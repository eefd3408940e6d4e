"""Object storage and stores that go away, against a real S3-compatible server (moto on 127.0.0.1,
tests/s3server.py) and real sockets: an endpoint that accepts connections and never answers, one lost mid-run
(a TCP proxy in front of moto that is cut after a given request), missing credentials, an interrupted import to
s3:// rerun as its message says, and a store removed while it is being read. Every CLI case runs in a child
bounded in time and address space (``run_bounded``): a regression fails instead of hanging."""
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

import embedx
from embedx import measures
from embedx.errors import StorageError, StoreError
from embedx.store import Store
from tests.conftest import assert_one_line_error, run_bounded
from tests.s3server import s3_server

# Short limits for the cases that wait on a silent endpoint (the defaults are checked below, without waiting).
FAST_LIMITS = {"EMBEDX_S3_CONNECT_TIMEOUT": "1", "EMBEDX_S3_READ_TIMEOUT": "1", "EMBEDX_S3_ATTEMPTS": "2"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(str(tmp_path_factory.mktemp("aws"))) as server:
        yield server


def _arrays(folder, rng, n=300, d=16, c=5):
    x = rng.standard_normal((n, d)).astype(np.float32)
    t = rng.standard_normal((c, d)).astype(np.float32)
    y = (np.arange(n) % c).astype(np.int64)
    for name, a in (("x", x), ("t", t), ("y", y)):
        np.save(folder / f"{name}.npy", a)
    return x, t, y, ["import", "--images", folder / "x.npy", "--texts", folder / "t.npy", "--labels",
                     folder / "y.npy", "--chunk-rows", "32"]


class _Server:
    """A TCP server on 127.0.0.1 in a thread. ``silent``: accepts every connection and never answers (nor reads).
    Otherwise a proxy to ``upstream`` that, when the ``after``-th request whose first bytes contain ``pattern``
    arrives, calls ``on_match`` (if given; the request then goes on) or else cuts: drops every connection and
    stops listening, as an endpoint that went away (new connections are refused)."""

    def __init__(self, upstream=None, pattern: bytes = b"", after: int = 1, on_match=None):
        self.upstream, self.pattern, self.after, self.on_match = upstream, pattern, after, on_match
        self.matches, self.cut_done = 0, threading.Event()
        self.sockets, self.lock = [], threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.sockets.append(conn)
            if self.upstream is not None:
                up = socket.create_connection(self.upstream)
                with self.lock:
                    self.sockets.append(up)
                threading.Thread(target=self._pump, args=(conn, up, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(up, conn, False), daemon=True).start()

    def _pump(self, src, dst, requests):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if requests and self.pattern and self.pattern in data:
                    with self.lock:
                        self.matches += 1
                        hit = self.matches == self.after
                    if hit and self.on_match is None:
                        self.cut()
                        return
                    if hit:
                        self.on_match()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.cut_done.set()
        self.close()

    def close(self):
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def _moto_address(s3):
    host, port = s3.endpoint.rsplit("//", 1)[1].split(":")
    return host, int(port)


# -- an endpoint that accepts and never answers -----------------------------------------------------------------

def test_a_silent_endpoint_fails_in_one_line_within_the_timeouts(tmp_path, rng):
    """Before: botocore's and s3fs's retries of a 15-60 s read timeout blocked about 410 s. Now each request gets
    EMBEDX_S3_ATTEMPTS attempts of EMBEDX_S3_READ_TIMEOUT seconds: one line naming the URL and the endpoint. (The
    defaults, 3 attempts of a 10 s read, are checked in every filesystem by the next test, not waited for: 30 s.)"""
    hole = _Server()
    try:
        _, _, _, imp = _arrays(tmp_path, rng)
        env = dict(AWS_ENDPOINT_URL=hole.endpoint, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
                   AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", **FAST_LIMITS)
        t0 = time.monotonic()
        rc, _, err = run_bounded("info", "s3://bucket/s.zarr", env=env, timeout=90)
        assert_one_line_error(rc, err, "s3://bucket/s.zarr", f"storage endpoint {hole.endpoint}",
                              "did not answer in time", "2 attempts", "read timeout of 1 s")
        assert rc == 2 and time.monotonic() - t0 < 45, time.monotonic() - t0  # start-up included, on a busy machine
        for args in (["info", "s3://bucket/s.zarr"], [*imp, "--out", "s3://bucket/s.zarr"],
                     ["import", "--from", "clip-retrieval", "s3://bucket/dump", "--out", tmp_path / "d.zarr"]):
            t0 = time.monotonic()
            rc, _, err = run_bounded(*args, env=env, timeout=90)
            assert rc == 2, err
            assert_one_line_error(rc, err, "s3://bucket/", f"storage endpoint {hole.endpoint}",
                                  "did not answer in time", "EMBEDX_S3_READ_TIMEOUT")
            assert time.monotonic() - t0 < 45, (args, time.monotonic() - t0)
    finally:
        hole.close()


def test_s3_limits_are_the_documented_ones_in_every_filesystem_embedx_builds(tmp_path, monkeypatch):
    """The filesystems behind url_fs (dumps, sources, checksums) and behind zarr (stores) take the same limits:
    5 s connect, 10 s read, 3 attempts, s3fs's own retry loop off; EMBEDX_S3_* override them, a bad value is one
    line; other protocols are left alone."""
    from embedx.fs import url as urlfs

    for env in ({}, {"EMBEDX_S3_CONNECT_TIMEOUT": "2", "EMBEDX_S3_READ_TIMEOUT": "7.5", "EMBEDX_S3_ATTEMPTS": "4"}):
        for k in ("EMBEDX_S3_CONNECT_TIMEOUT", "EMBEDX_S3_READ_TIMEOUT", "EMBEDX_S3_ATTEMPTS"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        want = (2.0, 7.5, 4) if env else (5.0, 10.0, 3)
        fs, _ = urlfs.url_fs("s3://bucket/some/store.zarr")
        cfg = fs.config_kwargs
        assert (cfg["connect_timeout"], cfg["read_timeout"], cfg["retries"]["total_max_attempts"]) == want
        assert cfg["retries"]["mode"] == "standard" and fs.retries == 1
    monkeypatch.setenv("EMBEDX_S3_READ_TIMEOUT", "soon")
    with pytest.raises(StorageError, match="EMBEDX_S3_READ_TIMEOUT must be a positive number"):
        urlfs.url_fs("s3://bucket/x")
    assert urlfs.storage_options("memory://x") == {} and urlfs.storage_options(str(tmp_path)) == {}


def test_zarr_opens_s3_stores_with_the_same_limits(s3, monkeypatch):
    from embedx.fs import url as urlfs

    monkeypatch.setenv("EMBEDX_S3_READ_TIMEOUT", "6")
    g = urlfs.open_group(s3.url("limits/g.zarr"), mode="w")
    fs = g.store.fs
    assert fs.config_kwargs["read_timeout"] == 6.0 and fs.config_kwargs["retries"]["total_max_attempts"] == 3
    assert fs.retries == 1


# -- an endpoint lost mid-run -------------------------------------------------------------------------------------

def test_an_endpoint_lost_mid_run_is_one_line_naming_it(s3, tmp_path, rng):
    """The server goes away after a few chunk requests of a measure (reads) and of an import (writes): one line
    naming the URL and the endpoint, exit 2; never an internal error, and never "damaged"."""
    x, t, y, imp = _arrays(tmp_path, rng)
    url = s3.url("lost/s.zarr")
    embedx.import_arrays(url, images=x, texts=t, labels=y, chunk_rows=32)
    for args, pattern in ((["measure", url], f"GET /{s3.bucket}/lost/s.zarr/images/embeddings/c/"),
                          ([*imp, "--out", s3.url("lost/new.zarr")], f"PUT /{s3.bucket}/lost/new.zarr/images/")):
        proxy = _Server(_moto_address(s3), pattern.encode(), after=3)
        try:
            # the default limits: a cut endpoint refuses at once (short read timeouts would also fail on a slow,
            # loaded moto before the cut)
            rc, _, err = run_bounded(*args, env={"AWS_ENDPOINT_URL": proxy.endpoint}, timeout=120)
            assert proxy.cut_done.is_set(), err
            assert rc == 2 and "internal" not in err and "damaged" not in err, err
            assert_one_line_error(rc, err, url.rsplit("/", 1)[0], f"storage endpoint {proxy.endpoint}")
        finally:
            proxy.close()


# -- missing credentials ------------------------------------------------------------------------------------------

def test_missing_credentials_for_dumps_and_wds_are_one_line(s3, tmp_path):
    """Before: `error: internal NoCredentialsError` and exit 1 for `import --from ... s3://` and `wds:s3://`."""
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.pipe(f"{s3.bucket}/creds/dump/img_emb/img_emb_0.npy", b"x")
    fs.pipe(f"{s3.bucket}/creds/shards/0.tar", b"x")
    none = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    for args in (["import", "--from", "clip-retrieval", s3.url("creds/dump"), "--out", tmp_path / "a.zarr"],
                 ["embed", "-m", "embedx-tiny", "--data", f"wds:{s3.url('creds/shards/0.tar')}", "--out",
                  tmp_path / "b.zarr"],
                 ["info", s3.url("creds/s.zarr")]):
        rc, _, err = run_bounded(*args, env=none, timeout=120)
        assert rc == 2, err
        assert_one_line_error(rc, err, "no credentials", s3.endpoint, "AWS_ACCESS_KEY_ID")


# -- an interrupted import to s3:// -------------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["create:arrays", "commit:data"])
def test_an_interrupted_s3_import_is_rerun_as_its_messages_say(s3, tmp_path, rng, point):
    """Killed while creating the store (arrays made, no metadata yet) or mid-commit: every command that meets the
    store says to rerun the import with --overwrite (imports do not resume), and that rerun works. Before: the
    store said "rerun to resume", the rerun was refused, and after a kill in creation --overwrite was refused
    too ("not an embedx store")."""
    x, t, y, imp = _arrays(tmp_path, rng)
    url = s3.url(f"interrupted/{point.replace(':', '-')}.zarr")
    rc, _, _ = run_bounded(*imp, "--out", url, env={"EMBEDX_CRASH_AT": point}, timeout=120)
    assert rc == -9
    for args in (["measure", url], [*imp, "--out", url]):
        rc, _, err = run_bounded(*args, timeout=120)
        assert rc == 2, err
        assert_one_line_error(rc, err, url, "--overwrite")
        assert "to resume" not in err, err
    if point == "commit:data":
        rc, out, _ = run_bounded("info", url, timeout=120)
        assert "UNFINISHED" in out and "rerun the import with --overwrite" in out and "to resume" not in out, out
    rc, out, err = run_bounded(*imp, "--out", url, "--overwrite", timeout=120)
    assert rc == 0, err
    s = Store(url)
    assert s.complete and s.n_images == len(x)
    np.testing.assert_array_equal(s.labels(), y)
    np.testing.assert_allclose(s.images(dtype=np.float32), x.astype(np.float16).astype(np.float32))


# -- a store removed while it is being read ------------------------------------------------------------------------

def test_a_local_store_removed_mid_read_is_named(tmp_path, rng):
    """Before: `KeyError: 'images/embeddings'` (an internal error)."""
    x, t, y, _ = _arrays(tmp_path, rng)
    out = str(tmp_path / "s.zarr")
    embedx.import_arrays(out, images=x, texts=t, labels=y, chunk_rows=32)
    for read_first in (False, True):
        reader = Store(out)
        if read_first:
            reader.labels()
        shutil.rmtree(out)
        with pytest.raises(StoreError, match=r"the store at .*s\.zarr vanished while it was being read"):
            measures.compute(reader, ["acs", "iimm"])
        embedx.import_arrays(out, images=x, texts=t, labels=y, chunk_rows=32)


def test_an_s3_store_removed_mid_read_is_named(s3, tmp_path, rng):
    """In-process and through the CLI (the store deleted on the server when the reader asks for its third chunk):
    never a number from fill values, never "damaged" or "replaced"."""
    import fsspec

    x, t, y, _ = _arrays(tmp_path, rng)
    fs = fsspec.filesystem("s3")
    url = s3.url("vanish/s.zarr")
    embedx.import_arrays(url, images=x, texts=t, labels=y, chunk_rows=32)
    reader = Store(url)
    fs.rm(f"{s3.bucket}/vanish/s.zarr", recursive=True)
    with pytest.raises(StoreError, match="vanished while it was being read"):
        measures.compute(reader, ["acs", "iimm"])

    embedx.import_arrays(url, images=x, texts=t, labels=y, chunk_rows=32)
    proxy = _Server(_moto_address(s3), f"GET /{s3.bucket}/vanish/s.zarr/images/embeddings/c/".encode(), after=3,
                    on_match=lambda: fs.rm(f"{s3.bucket}/vanish/s.zarr", recursive=True))
    try:
        rc, _, err = run_bounded("measure", url, env={"AWS_ENDPOINT_URL": proxy.endpoint}, timeout=120)
    finally:
        proxy.close()
    assert proxy.matches >= 3
    assert_one_line_error(rc, err, f"the store at {url} vanished while it was being read")
    assert rc == 2
