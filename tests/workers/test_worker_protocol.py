"""A worker spoken to directly: requests it must refuse get an error reply (the worker lives on);
bytes that are not messages end it with a clear status."""

import socket
import subprocess
import sys

import msgpack
import pytest

from nattrav.workers.messages import MessageReader, encode


@pytest.fixture
def worker():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen([sys.executable, "-m", "nattrav.workers.worker", "--fd", str(theirs.fileno())],
                            pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE)
    theirs.close()
    ours.settimeout(20)
    reader = MessageReader()
    inbox = []

    def ask(data: bytes) -> dict:
        ours.sendall(data)
        while not inbox:
            chunk = ours.recv(65536)
            if not chunk:
                raise EOFError
            inbox.extend(reader.feed(chunk))
        return inbox.pop(0)

    hello = ask(b"")
    assert hello["t"] == "hello" and hello["impl"] == "c"
    yield ask, ours, proc
    ours.close()
    proc.wait(10)


def test_refused_requests_get_errors_and_the_worker_lives(worker):
    ask, _, _ = worker
    r = ask(encode("open", id=1, count=2, ip="127.0.0.1", ttl=None, ports=None, base=1 << 40, reuse_port=False))
    assert (r["t"], r["id"], r["kind"]) == ("error", 1, "ValueError")
    r = ask(encode("close", id=2, base=0, count=1 << 60))
    assert (r["t"], r["kind"]) == ("error", "ValueError")
    r = ask(encode("fire", id=3, burst={"n": 1, "src": 5}, timeout_ms=10))
    assert (r["t"], r["kind"]) == ("error", "ValueError") and "bad burst" in r["msg"]
    r = ask(encode("open", id=4, count=2, ip="127.0.0.1", ttl=None, ports=b"\x01", base=0, reuse_port=False))
    assert r["t"] == "error"
    r = ask(encode("take", id=5, index=7))
    assert (r["t"], r["kind"]) == ("error", "IndexError")
    r = ask(encode("open", id=6, count=2, ip="127.0.0.1", ttl=None, ports=None, base=0, reuse_port=False))
    assert r["t"] == "result" and len(r["ports"]) == 4
    r = ask(encode("shutdown", id=7))
    assert (r["t"], r["id"]) == ("result", 7)


def test_garbage_ends_the_worker_with_status_2(worker):
    _, sock, proc = worker
    sock.sendall(msgpack.packb({"v": 99, "t": "open"}))
    assert proc.wait(10) == 2
    assert b"bad message from coordinator" in proc.stderr.read()
