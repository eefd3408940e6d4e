"""A real S3-compatible server for the tests: moto in server mode (``ThreadedMotoServer``) on 127.0.0.1, with
request signing enforced, and the environment that points boto3, s3fs (botocore) and every process started
after it (``embedx`` subprocesses, Dask workers) at it.

    with s3_server() as s3:
        s3.url("some/store.zarr")   # s3://<bucket>/some/store.zarr
        s3.bad_credentials          # environment overrides: a key the server does not know

The server knows one IAM user (allowed everything) whose key goes into ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``; other keys are refused (moto's "reset-auth" turns authentication on after the user is
made). botocore (>= 1.28) reads the endpoint from ``AWS_ENDPOINT_URL``. fsspec caches filesystem instances, and an
s3fs instance keeps the client (endpoint, keys) it was made with: the cache is cleared on entry and on exit, so
no instance outlives its server.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field

REGION = "us-east-1"
_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
             "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
             "AWS_EC2_METADATA_DISABLED")


@dataclass
class S3:
    endpoint: str
    bucket: str
    env: dict
    bad_credentials: dict = field(default_factory=dict)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"


def clear_fsspec_instances() -> None:
    """Forget every cached fsspec filesystem (s3fs keeps its endpoint and keys in the instance)."""
    import fsspec
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fsspec.AbstractFileSystem.clear_instance_cache()


def _request(endpoint: str, path: str, body: str) -> None:
    import urllib.request

    req = urllib.request.Request(endpoint + path, data=body.encode(), method="POST",
                                 headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


@contextlib.contextmanager
def s3_server(tmp_dir: str):
    """Start moto on 127.0.0.1 (a free port), make a user and a bucket, enforce signed requests, and set the
    environment (restored after, with the server stopped)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    try:
        # Nothing from the machine's own AWS setup: an empty config and credentials file, no instance metadata.
        empty = os.path.join(tmp_dir, "aws-empty")
        open(empty, "w").close()
        base = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": empty,
                "AWS_SHARED_CREDENTIALS_FILE": empty, "AWS_EC2_METADATA_DISABLED": "true"}
        for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            os.environ.pop(k, None)
        os.environ.update(base, AWS_ACCESS_KEY_ID="bootstrap", AWS_SECRET_ACCESS_KEY="bootstrap")
        iam = boto3.session.Session().client("iam", endpoint_url=endpoint, region_name=REGION)
        user = f"embedx-{uuid.uuid4().hex[:8]}"  # moto's state is process-wide: a second server must not clash
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        env = dict(base, AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
        os.environ.update(env)
        _request(endpoint, "/moto-api/reset-auth", "0")  # from now on every request must be signed by a known key
        bucket = f"embedx-{uuid.uuid4().hex[:8]}"
        # a new session: botocore caches the credentials a session resolved first
        boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=bucket)
        clear_fsspec_instances()
        yield S3(endpoint, bucket, env, bad_credentials={"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000",
                                                         "AWS_SECRET_ACCESS_KEY": "wrong"})
    finally:
        clear_fsspec_instances()
        with contextlib.suppress(Exception):
            _request(endpoint, "/moto-api/reset-auth", "inf")  # moto's settings are process-wide: auth off again
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
