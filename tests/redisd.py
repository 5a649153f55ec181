"""A redis-server of the test's own: a free loopback port, a temporary directory, no persistence,
stopped at the end (never a system service). CI installs redis-server (.ci/install) and must not
skip; elsewhere a missing binary skips with the reason."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, port: int, directory: str, bind: str = "127.0.0.1"):
        self.port = port
        self.dir = directory
        self.bind = bind
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.bind}:{self.port}/0"

    def argv(self) -> list[str]:
        return ["redis-server", "--port", str(self.port), "--bind", self.bind, "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no",
                "--logfile", os.path.join(self.dir, "redis.log")]

    def start(self, popen=subprocess.Popen) -> RedisServer:
        self.proc = popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def wait(self, timeout: float = 10.0) -> RedisServer:
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def require_redis() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing (bash .ci/install installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server, or bash .ci/install)")


@contextmanager
def running_redis():
    require_redis()
    with tempfile.TemporaryDirectory(prefix="nattrav-redis-") as d:
        server = RedisServer(free_port(), d).start()
        try:
            yield server.wait()
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server():
    with running_redis() as server:
        yield server
