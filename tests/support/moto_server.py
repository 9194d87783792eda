"""A real moto server in its own process, reached over HTTP like AWS itself.

Tests talk to it with ordinary boto3 clients (``endpoint_url``), and the CLI
under test reaches it through ``AWS_ENDPOINT_URL``. Being a separate process it
can be stopped and restarted to simulate an outage.

By default its Kinesis shards store one record at a time (``moto_main.py``): moto's own
server loses acknowledged records when two requests write one shard at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import terminate

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MAIN = Path(__file__).with_name("moto_main.py")


class MotoServer:
    def __init__(self, port: int | None = None, serialised: bool = True) -> None:
        self.serialised = serialised
        """Kinesis shards store one record at a time (``moto_main.py``); False: moto as
        it comes, which loses records written to one shard concurrently."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        env = {**os.environ, **FAKE_CREDENTIALS}
        program = [str(MAIN)] if self.serialised else ["-m", "moto.server"]
        self.proc = subprocess.Popen(
            [sys.executable, *program, "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

    def reset(self) -> None:
        """Forget every stream and table (moto's reset API), between tests."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def client(self, service: str, **kwargs: object):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            **kwargs,
        )


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()
