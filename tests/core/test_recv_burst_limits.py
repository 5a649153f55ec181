"""Receive across a pool, burst validation, and the file-descriptor budget."""

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from nattrav.core import Burst, PackedBurst, SocketPool
from nattrav.core.fallback import PySocketPool
from nattrav.core.recv import Woken

POOLS = [SocketPool, PySocketPool]


@pytest.mark.parametrize("cls", POOLS)
def test_recv_returns_first_matching_datagram_and_counts_the_rest(cls):
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    with cls(64, "127.0.0.1") as pool:
        tx.sendto(b"noise", ("127.0.0.1", pool.ports[10]))
        tx.sendto(b"TOK-abc\x00\xff", ("127.0.0.1", pool.ports[42]))
        time.sleep(0.02)
        hit = pool.recv(b"TOK-", timeout=2)
        assert hit is not None
        assert (hit.index, hit.src, hit.payload) == (42, tx.getsockname(), b"TOK-abc\x00\xff")
        assert pool.recv_stats.rejected == 1
        t = time.monotonic()
        assert pool.recv(b"TOK-", timeout=0.1) is None
        assert 0.09 < time.monotonic() - t < 1.0
    tx.close()


@pytest.mark.parametrize("cls", POOLS)
def test_recv_wakes_on_the_control_descriptor(cls):
    r, w = os.pipe()
    try:
        with cls(4, "127.0.0.1") as pool:
            os.write(w, b"!")
            t = time.monotonic()
            with pytest.raises(Woken):
                pool.recv(b"x", timeout=5, wake_fd=r)
            assert time.monotonic() - t < 1
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    "burst",
    [
        Burst([0, 1], "127.0.0.1", [1], b"x"),  # ports shorter than indices
        Burst([0], "127.0.0.1", [70000], b"x"),
        Burst([0], "127.0.0.1", [-1], b"x"),
        Burst([0], "999.0.0.1", [1], b"x"),
        Burst([0], ["1.2.3.4", "1.2.3.5"], [1], b"x"),
        Burst([0, 1], "1.2.3.4", [1, 2], [b"ab", b"abc"]),  # tokens of different length
        Burst([0], "1.2.3.4", [1], b"x" * 65508),
        Burst([0], "1.2.3.4", [1], b"x", rate=0),
        Burst([0], "1.2.3.4", [1], b"x", rate=float("nan")),
        Burst([0], "1.2.3.4", [1], b"x", ttl=0),
        Burst([-1], "1.2.3.4", [1], b"x"),
        Burst(["a"], "1.2.3.4", [1], b"x"),
    ],
)
def test_bad_bursts_are_refused_with_value_error(burst):
    with pytest.raises(ValueError):
        burst.pack()


def test_burst_packs_to_arrays_and_survives_the_wire():
    p = Burst([3, 1, 2], ["192.0.2.1", "192.0.2.2", "192.0.2.3"], [7, 8, 9], [b"a1", b"b2", b"c3"],
              rate=500, ttl=2).pack()
    assert (p.n, p.src_min, p.src_max, p.payload_len) == (3, 1, 3, 2)
    assert p.ip_of(1) == "192.0.2.2" and p.payload_of(2) == b"c3"
    q = PackedBurst.from_wire(p.to_wire())
    assert q == p


@settings(max_examples=200, deadline=None)
@given(hs.dictionaries(hs.sampled_from(["n", "src", "ips", "ports", "payload", "plen", "rate", "ttl", "lo", "hi"]),
                       hs.one_of(hs.integers(-5, 1 << 30), hs.binary(max_size=64), hs.floats(), hs.none())))
def test_wire_bursts_raise_only_value_error(m):
    try:
        PackedBurst.from_wire(m)
    except ValueError:
        pass


def test_wire_burst_with_a_count_where_bytes_belong_allocates_nothing():
    good = Burst([0], "192.0.2.1", [1], b"x").pack().to_wire()
    for key in ("src", "ips", "ports", "payload"):
        with pytest.raises(ValueError, match=key):
            PackedBurst.from_wire({**good, key: 1 << 40})
    with pytest.raises(ValueError):
        PackedBurst.from_wire({**good, "n": True})
    with pytest.raises(ValueError):
        PackedBurst.from_wire({**good, "hi": 1 << 30, "lo": 0})


def test_fd_exhaustion_gives_the_clear_error():
    code = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))
        from nattrav.core import SocketPool
        from nattrav.core.fallback import PySocketPool
        from nattrav.errors import FdLimitError
        for cls in (SocketPool, PySocketPool):
            try:
                cls(500, "127.0.0.1")
            except FdLimitError as e:
                print(cls.__name__, e.errno, e.strerror)
            else:
                sys.exit("no error")
        p = SocketPool(20, "127.0.0.1")  # within the limit it works
        print("ok", len(p.ports))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "ok 20"
    for line in lines[:2]:
        assert " 24 " in line  # EMFILE
        assert "500 sockets need about" in line and "allows 100" in line and "ulimit -n" in line


def test_soft_limit_is_raised_towards_the_hard_one():
    code = textwrap.dedent("""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
        from nattrav.core import SocketPool
        with SocketPool(1000, "127.0.0.1") as p:
            print(len(set(p.ports)), resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 1000)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1000", "True"]
