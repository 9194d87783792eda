"""A real moto server in its own process, reached over HTTP like AWS itself.

Tests talk to it with ordinary boto3 clients (``endpoint_url``), and the CLI
under test reaches it through ``AWS_ENDPOINT_URL``. Being a separate process it
can be stopped and restarted to simulate an outage.

By default its Kinesis shards store one record at a time (``moto_main.py``): moto's own
server loses acknowledged records when two requests write one shard at once.
"""

from __future__ import annotations

import contextlib
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


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on 127.0.0.1:``port`` (Linux:
    the LISTEN entry of /proc/net/tcp, then that socket's inode among the process's fds)."""
    want = f"0100007F:{port:04X}"
    inodes = set()
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                inodes.add(f"socket:[{fields[9]}]")
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return True
    return False


class MotoServer:
    def __init__(self, port: int | None = None, serialised: bool = True) -> None:
        self.serialised = serialised
        """Kinesis shards store one record at a time (``moto_main.py``); False: moto as
        it comes, which loses records written to one shard concurrently."""
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> MotoServer:
        """Start and wait for an answer. A port chosen here can be taken by another
        process between ``free_port`` and moto's bind (the server then exits): up to 5
        ports are tried, as the Mosquitto fixture does."""
        for _ in range(1 if self._fixed_port else 5):
            if self._start_once(timeout):
                return self
            self.port = free_port()
        raise RuntimeError(f"moto server exited with {self.proc and self.proc.returncode}")

    def _start_once(self, timeout: float) -> bool:
        """True once this process answers; False if it exited (its port was taken)."""
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
                return False
            # only once our process listens: whoever took the port may answer HTTP too
            if _listens(self.proc.pid, self.port):
                try:
                    urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).read()
                    return True
                except OSError:
                    pass
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
