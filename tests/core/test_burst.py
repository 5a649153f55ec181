"""Bursts through the C core and the Python fallback: every planned packet sent exactly once, payloads
intact, TTL set for the burst and restored, errors counted rather than lost."""

import collections
import errno
import socket
import time

import pytest

from nattrav._core import ffi, lib
from nattrav.core import Burst, SocketPool, check
from nattrav.core.fallback import PySocketPool

from .conftest import drain_sink

POOLS = [SocketPool, PySocketPool]


def settle(s, expect, timeout=2.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        got += drain_sink(s, with_ttl=True)
        time.sleep(0.005)
    return got


@pytest.mark.parametrize("cls", POOLS)
def test_many_sockets_one_packet_each_exactly_once_intact(cls, sink):
    rx, port = sink
    with cls(200, "127.0.0.1") as pool:
        tokens = [b"tok:%06d:" % i + bytes([i % 251]) * 20 for i in range(200)]
        st = pool.send_burst(Burst(range(200), "127.0.0.1", [port] * 200, tokens))
        assert (st.planned, st.sent, st.failed) == (200, 200, 0)
        got = settle(rx, 200)
        assert len(got) == 200
        assert sorted(d for d, _, _ in got) == sorted(tokens)
        # each token came from the socket the burst named
        by_port = {p: i for i, p in enumerate(pool.ports)}
        for data, src, _ in got:
            assert data == tokens[by_port[src[1]]]


@pytest.mark.parametrize("cls", POOLS)
def test_one_socket_many_ports_and_many_to_one(cls):
    with cls(8, "127.0.0.1") as rx, cls(3, "127.0.0.1") as tx:
        burst = Burst.one_to_many(1, "127.0.0.1", rx.ports * 4, b"probe")
        st = tx.send_burst(burst)
        assert st.sent == 32 and st.failed == 0
        counts = collections.Counter()
        while (h := rx.recv(b"probe", 0.3)) is not None:
            assert h.src == ("127.0.0.1", tx.ports[1]) and h.payload == b"probe"
            counts[h.index] += 1
        # every probe matched, so each was read alone and none was dropped behind a winner
        assert sum(counts.values()) == 32 and rx.recv_stats.dropped_after_hit == 0
        assert set(counts.values()) == {4}
        st = tx.send_burst(Burst.many_to_one([0, 1, 2], "127.0.0.1", rx.ports[5], b"m"))
        assert st.sent == 3
        srcs = set()
        while (h := rx.recv(b"m", 0.3)) is not None:
            assert h.index == 5
            srcs.add(h.src[1])
        assert srcs == set(tx.ports)


@pytest.mark.parametrize("cls", POOLS)
def test_burst_ttl_is_really_set_then_restored(cls, sink):
    rx, port = sink
    with cls(4, "127.0.0.1") as pool:
        st = pool.send_burst(Burst(range(4), "127.0.0.1", [port] * 4, b"low", ttl=3))
        assert st.sent == 4
        got = settle(rx, 4)
        assert [t for _, _, t in got] == [3, 3, 3, 3]  # loopback does not decrement
        pool.send_burst(Burst([2], "127.0.0.1", [port], b"after"))
        (after,) = settle(rx, 1)
        assert after[0] == b"after" and after[2] == 64  # the default came back
        pool.set_ttl(0, 9)
        pool.send_burst(Burst([0], "127.0.0.1", [port], b"nine"))
        assert settle(rx, 1)[0][2] == 9


def test_c_burst_ttl_travels_with_each_packet_and_leaves_the_socket_option_alone(sink):
    # the C core sends a burst's TTL as IP_TTL ancillary data: one packet a socket goes by sendmsg,
    # several by sendmmsg, and the socket's own TTL (9 here) is what getsockopt reads all along
    rx, port = sink
    with SocketPool(2, "127.0.0.1", ttl=9) as pool:
        views = [socket.socket(fileno=fd) for fd in pool.fds]
        try:
            st = pool.send_burst(Burst([0, 1, 1, 1], "127.0.0.1", [port] * 4, [b"a0", b"b1", b"b2", b"b3"], ttl=4))
            assert (st.sent, st.syscalls) == (4, 2)
            got = sorted(settle(rx, 4))
            assert [(d, t) for d, _, t in got] == [(b"a0", 4), (b"b1", 4), (b"b2", 4), (b"b3", 4)]
            assert [v.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) for v in views] == [9, 9]
            pool.send_burst(Burst([0, 1, 1], "127.0.0.1", [port] * 3, b"own"))
            assert [t for _, _, t in settle(rx, 3)] == [9, 9, 9]
        finally:
            for v in views:
                v.detach()


@pytest.mark.parametrize("cls", POOLS)
def test_permanent_errors_are_counted_not_lost(cls, sink):
    rx, port = sink
    with cls(1, "127.0.0.1") as pool:
        # port 0 is refused by the kernel (EINVAL) for each such packet; the others still go
        st = pool.send_burst(Burst([0, 0, 0], "127.0.0.1", [0, port, 0], b"x"))
        assert (st.planned, st.sent, st.failed, st.last_errno) == (3, 1, 2, errno.EINVAL)
        assert len(settle(rx, 1)) == 1


@pytest.mark.parametrize("cls", POOLS)
def test_icmp_errors_from_closed_ports_are_retried_and_counted(cls, sink):
    rx, port = sink
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()[1]
    probe.close()
    with cls(1, "127.0.0.1") as pool:
        pool.send_burst(Burst([0], "127.0.0.1", [closed], b"x"))  # provokes port unreachable
        time.sleep(0.05)
        st = pool.send_burst(Burst([0, 0], "127.0.0.1", [port, port], b"y"))
        # the pending error either met the send (and the packet was retried) or waits in the queue
        assert st.sent == 2 and st.failed == 0
        assert st.icmp_errors + pool.drain_errors() >= 1
        assert len(settle(rx, 2)) == 2


@pytest.mark.parametrize("cls", POOLS)
def test_pacing_holds_the_rate(cls, sink):
    rx, port = sink
    tolerance = 0.05 if cls is SocketPool else 0.25
    rates = []
    with cls(1, "127.0.0.1") as pool:
        for _ in range(3):  # a loaded CI box may preempt one run right at its end
            st = pool.send_burst(Burst.one_to_many(0, "127.0.0.1", [port] * 400, b"p", rate=10_000))
            assert st.sent == 400
            rates.append((st.sent - 1) / st.send_span_s)
            drain_sink(rx)
            if abs(rates[-1] - 10_000) / 10_000 < tolerance:
                return
    pytest.fail(f"no run within {tolerance:.0%} of 10000 pps: {rates}")


def test_c_refuses_lengths_it_did_not_check():
    fds = ffi.new("int[]", [0])
    st = ffi.new("nt_burst_stats *")
    src = ffi.new("int32_t[]", [0, 0])
    ports = ffi.new("uint16_t[]", [1, 2])
    ips = ffi.new("uint8_t[]", 12)  # neither 4 nor 4*n
    with pytest.raises(OSError) as info:
        check(lib.nt_burst_send(fds, 1, src, 2, ips, 12, ports, ffi.NULL, 0, 0, 0, 0, 100, st), "burst")
    assert info.value.errno == errno.EINVAL
    ips = ffi.new("uint8_t[]", 4)
    bad_src = ffi.new("int32_t[]", [0, 5])  # index past the table
    assert lib.nt_burst_send(fds, 1, bad_src, 2, ips, 4, ports, ffi.NULL, 0, 0, 0, 0, 100, st) == -errno.EINVAL
    payload = ffi.new("uint8_t[]", 7)  # neither payload_len nor n*payload_len
    assert lib.nt_burst_send(fds, 1, src, 2, ips, 4, ports, payload, 7, 3, 0, 0, 100, st) == -errno.EINVAL


def test_index_out_of_range_is_rejected_before_c():
    with SocketPool(2, "127.0.0.1") as pool:
        with pytest.raises(IndexError):
            pool.send_burst(Burst([0, 2], "127.0.0.1", [9, 9], b"x"))


@pytest.mark.parametrize("cls", POOLS)
def test_winner_followers_stay_for_the_socket_that_takes_over(cls):
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    with cls(4, "127.0.0.1") as pool:
        for msg in (b"TOK1", b"after-1", b"after-2"):
            tx.sendto(msg, ("127.0.0.1", pool.ports[2]))
        time.sleep(0.02)
        assert pool.recv(b"TOK", 2).payload == b"TOK1"
        s = socket.socket(fileno=pool.take(2))
        s.settimeout(1)
        assert [s.recv(100), s.recv(100)] == [b"after-1", b"after-2"]
        s.close()
    tx.close()


def test_noise_is_read_in_batches_and_the_winner_found():
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    with SocketPool(2, "127.0.0.1") as pool:
        for i in range(100):
            tx.sendto(b"noise", ("127.0.0.1", pool.ports[1]))
        tx.sendto(b"WIN", ("127.0.0.1", pool.ports[1]))
        time.sleep(0.05)
        hit = pool.recv(b"WIN", 2)
        assert hit is not None and hit.index == 1
        st = pool.recv_stats
        assert st.rejected == 100 and st.received == 101
    tx.close()


@pytest.mark.parametrize("cls", POOLS)
def test_taken_socket_leaves_the_pool(cls):
    with cls(3, "127.0.0.1") as pool:
        port = pool.ports[1]
        fd = pool.take(1)
        s = socket.socket(fileno=fd)
        assert s.getsockname() == ("127.0.0.1", port)
        with pytest.raises(IndexError):
            pool.set_ttl(1, 5)
        with pytest.raises(IndexError):
            pool.send_burst(Burst([0, 1, 2], "127.0.0.1", [9, 9, 9], b"x"))
    # closing the pool did not close the taken socket
    assert s.getsockname() == ("127.0.0.1", port)
    s.close()
