import socket

import pytest

IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # Linux value; Python 3.11 does not export it


@pytest.fixture
def sink():
    """A loopback receiver with a big buffer; yields (socket, port)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    yield s, s.getsockname()[1]
    s.close()


def drain_sink(s, with_ttl=False):
    out = []
    while True:
        try:
            data, anc, _, src = s.recvmsg(2048, 64)
        except BlockingIOError:
            return out
        ttl = next((int.from_bytes(d[:4], "little") for lvl, t, d in anc
                    if lvl == socket.IPPROTO_IP and t == socket.IP_TTL), None)
        out.append((data, src, ttl) if with_ttl else (data, src))
