"""An S3 emulator on loopback for the tests: moto's server mode in a subprocess.

:func:`s3_server` (module-scoped fixture) starts ``python -m moto.server`` on 127.0.0.1 on a
free port, waits until it answers, creates a bucket with boto3 and yields an :class:`S3Server`
(endpoint, bucket, the storage options and the environment that point the pipeline at it). It
stops the server by its PID afterwards. Without moto (or boto3) installed, every test using it
is skipped with the reason. moto is an emulator: it accepts any credentials and implements
conditional put (``If-None-Match``), which is what deltalake commits rely on; it says nothing
about real AWS (IAM, throttling, consistency under load).
"""

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: A fake secret: tests check it never reaches the logs, the CLI output or a table.
SECRET = "moto-secret-" + "x7Q2v9"


@dataclass(frozen=True)
class S3Server:
    """A running emulator and how to reach it.

    Attributes:
        endpoint: ``http://127.0.0.1:<port>``.
        bucket: A bucket created for the test module.
        options: deltalake/object_store storage options for the endpoint.
        env: The same as environment variables (``AWS_*``), for a subprocess.
        pid: The server's process id.
    """

    endpoint: str
    bucket: str
    options: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    pid: int = 0

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *parts])

    def client(self):  # noqa: ANN201 - boto3 client type is dynamic
        """A boto3 S3 client on the endpoint."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.options["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.options["AWS_SECRET_ACCESS_KEY"],
            region_name=self.options["AWS_REGION"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket (paginated)."""
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(
    endpoint: str, proc: subprocess.Popen, log: Path, timeout_s: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text(errors="replace")[-2000:]
            pytest.fail(f"moto server exited with {proc.returncode}: {out}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(endpoint, timeout=1).close()  # noqa: S310 - loopback
            return
        time.sleep(0.2)
    pytest.fail(f"moto server on {endpoint} did not answer within {timeout_s}s")


@contextlib.contextmanager
def running_s3() -> Iterator[S3Server]:
    """Start moto's server, create a bucket, yield it, stop the server by PID."""
    missing = [m for m in ("moto", "boto3") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"S3 emulator unavailable: {', '.join(missing)} not installed")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # a file, not a pipe: moto logs every request and a full pipe would block it
    log = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_up(endpoint, proc, log)
        options = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": SECRET,
        }
        server = S3Server(endpoint, f"curation-{uuid.uuid4().hex[:10]}", options, options, proc.pid)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server with a fresh bucket for the test module (see :func:`running_s3`)."""
    with running_s3() as server:
        yield server
