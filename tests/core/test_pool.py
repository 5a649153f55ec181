import errno
import socket

import pytest

from nattrav.core import SocketPool, check


def test_bound_ports_are_real_and_receive():
    with SocketPool(8, "127.0.0.1", blocking=True) as pool:
        ports = pool.ports
        assert len(set(ports)) == 8 and all(1024 <= p <= 65535 for p in ports)
        for fd, port in zip(pool.fds, ports):
            s = socket.socket(fileno=socket.dup(fd))
            try:
                assert s.getsockname() == ("127.0.0.1", port)
                assert s.type == socket.SOCK_DGRAM
            finally:
                s.close()
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.bind(("127.0.0.1", 0))
        tx.sendto(b"hello", ("127.0.0.1", ports[3]))
        rx = socket.socket(fileno=socket.dup(pool.fds[3]))
        rx.settimeout(2)
        data, src = rx.recvfrom(100)
        assert data == b"hello" and src == tx.getsockname()
        rx.close()
        tx.close()


def test_ttl_is_set_on_every_socket():
    with SocketPool(4, "127.0.0.1", ttl=3) as pool:
        for fd in pool.fds:
            s = socket.socket(fileno=socket.dup(fd))
            assert s.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 3
            s.close()
        pool.set_ttl(1, 64)
        s = socket.socket(fileno=socket.dup(pool.fds[1]))
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 64
        s.close()


def test_requested_ports_and_reuse():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    free = probe.getsockname()[1]
    probe.close()
    with SocketPool(2, "127.0.0.1", [free, free], reuse_port=True) as pool:
        assert pool.ports == [free, free]


def test_c_error_arrives_as_oserror_with_errno_and_message():
    with SocketPool(1, "127.0.0.1") as first:
        taken = first.ports[0]
        with pytest.raises(OSError) as info:
            SocketPool(1, "127.0.0.1", [taken])
    assert info.value.errno == errno.EADDRINUSE
    assert "opening 1 UDP sockets on 127.0.0.1" in str(info.value)
    assert "Address already in use" in str(info.value)


def test_failed_open_closes_what_it_opened():
    import os

    before = len(os.listdir("/proc/self/fd"))
    with SocketPool(1, "127.0.0.1") as first:
        with pytest.raises(OSError):
            SocketPool(5, "127.0.0.1", [0, 0, 0, first.ports[0], 0])
    assert len(os.listdir("/proc/self/fd")) == before


def test_check_maps_negative_errno():
    assert check(7, "x") == 7
    with pytest.raises(OSError) as info:
        check(-errno.EHOSTUNREACH, "sending")
    assert info.value.errno == errno.EHOSTUNREACH
    assert info.value.strerror.startswith("sending: ")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count": -1},
        {"count": 2, "ports": [1]},
        {"count": 1, "ports": [70000]},
        {"count": 1, "ttl": 0},
        {"count": 1, "ttl": 256},
        {"count": 1, "ip": "not-an-ip"},
    ],
)
def test_bad_arguments_are_rejected_before_c(kwargs):
    with pytest.raises(ValueError):
        SocketPool(**kwargs)
