"""csrc/mmsg.c through core/mmsg.py: recvmmsg/sendmmsg batches, the STUN fast path, the load generator."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from nattrav.core.mmsg import RecvBatch, StunFastPath, send_batch, stun_load
from nattrav.proto.stun import binding_request, parse
from nattrav.proto.stun_attrs import Attr, Class


def udp(ip: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    s.setblocking(False)
    return s


def wait_readable(s: socket.socket) -> None:
    import select

    assert select.select([s], [], [], 2.0)[0], "nothing arrived"


def test_send_and_receive_a_batch():
    a, b = udp(), udp()
    payloads = [os.urandom(n) for n in (1, 20, 100, 1500)] * 10
    sent = send_batch(a, [(p, b.getsockname()) for p in payloads])
    assert sent == len(payloads)
    wait_readable(b)
    batch = RecvBatch(n=64, bufsize=2048)
    got = []
    while len(got) < len(payloads):
        try:
            batch.recv(b)
        except BlockingIOError:
            wait_readable(b)
            continue
        got += batch.datagrams()
    assert [d for d, _ in got] == payloads
    assert {src for _, src in got} == {a.getsockname()}
    a.close()
    b.close()


def test_nothing_waiting_is_eagain_and_oversized_is_flagged():
    a, b = udp(), udp()
    batch = RecvBatch(n=4, bufsize=64)
    with pytest.raises(BlockingIOError) as info:
        batch.recv(b)
    assert info.value.errno == errno.EAGAIN
    a.sendto(b"x" * 65, b.getsockname())
    wait_readable(b)
    assert batch.recv(b) == 1
    assert batch.datagrams() == [(None, a.getsockname())]  # cut by the kernel: reported, not passed on
    a.close()
    b.close()


def test_arguments_are_checked_before_c():
    with pytest.raises(ValueError):
        RecvBatch(n=0)
    with pytest.raises(ValueError):
        RecvBatch(n=257)
    with pytest.raises(ValueError):
        StunFastPath(b"abc")  # not a whole number of attributes
    with pytest.raises(ValueError):
        stun_load(udp(), ("127.0.0.1", 9), inflight=0)
    with pytest.raises(OSError) as info:
        RecvBatch().recv(10**6)  # not a descriptor: -EBADF mapped by errors.check
    assert info.value.errno == errno.EBADF


def test_fast_path_answers_bare_requests_and_hands_back_the_rest():
    server, client = udp(), udp()
    tail = bytes.fromhex("802b0008000102a47f000001")  # RESPONSE-ORIGIN 127.0.0.1:676
    fp = StunFastPath(tail, n=16)
    bare = binding_request()
    with_attr = binding_request(change_port=True)
    classic = binding_request(classic=True)
    for req in (bare, with_attr, classic):
        client.sendto(req.encode(), server.getsockname())
    client.sendto(b"\x01\x02", server.getsockname())  # malformed
    wait_readable(server)
    rest = []
    while True:
        try:
            rest += fp.serve(server)
        except BlockingIOError:
            break
    # the two requests C does not answer come back to Python, unchanged
    assert sorted(d for d, _ in rest) == sorted([with_attr.encode(), classic.encode()])
    wait_readable(client)
    m = parse(client.recv(2048))
    assert m.cls == Class.SUCCESS and m.transaction_id == bare.transaction_id
    assert m.get(Attr.XOR_MAPPED_ADDRESS) == client.getsockname()
    assert m.get(Attr.RESPONSE_ORIGIN) == ("127.0.0.1", 676)
    assert fp.stats["answered_fast"] == 1 and fp.stats["malformed"] == 1
    # the same request again at once is a replay: dropped in C, counted
    client.sendto(bare.encode(), server.getsockname())
    wait_readable(server)
    assert fp.serve(server) == []
    assert fp.stats["replayed"] == 1
    server.close()
    client.close()


def test_load_generator_against_the_fast_path():
    # the bench's generator, briefly, against a fast path served from a thread
    import threading

    server = udp()
    fp = StunFastPath(b"", n=64)
    stop = threading.Event()

    def serve():
        import select

        while not stop.is_set():
            if select.select([server], [], [], 0.05)[0]:
                try:
                    fp.serve(server)
                except BlockingIOError:
                    pass

    t = threading.Thread(target=serve)
    t.start()
    try:
        r = stun_load(udp(), server.getsockname(), inflight=8, duration=0.3)
    finally:
        stop.set()
        t.join()
        server.close()
    assert r["received"] > 100 and r["received"] <= r["sent"]
    assert fp.stats["answered_fast"] >= r["received"]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nattrav.errors import BadPacket  # noqa: E402

COOKIE = bytes.fromhex("2112a442")


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["random", "header", "bare"]),
    body=st.binary(max_size=120),
    tid=st.binary(min_size=12, max_size=12),
)
def test_c_fast_path_agrees_with_the_python_parser(kind, body, tid):
    """Whatever C answers is a bare Binding request; whatever C calls malformed, parse() rejects too;
    what C hands back, parse() sees first."""
    if kind == "random":
        data = body
    elif kind == "header":  # a consistent header over random attributes
        body = body[: len(body) // 4 * 4]
        data = b"\x00\x01" + len(body).to_bytes(2, "big") + COOKIE + tid + body
    else:
        data = b"\x00\x01\x00\x00" + COOKIE + tid
    server, client = udp(), udp()
    try:
        fp = StunFastPath(b"", n=4, replay_slots=0)
        client.sendto(data, server.getsockname())
        wait_readable(server)
        rest = fp.serve(server)
        st_ = fp.stats
        if st_["answered_fast"]:
            assert data[:4] == b"\x00\x01\x00\x00" and data[4:8] == COOKIE and len(data) == 20
            wait_readable(client)
            assert parse(client.recv(2048)).get(Attr.XOR_MAPPED_ADDRESS) == client.getsockname()
        elif st_["malformed"]:
            with pytest.raises(BadPacket):
                parse(data)
        else:
            assert rest == [(data, client.getsockname())]
    finally:
        server.close()
        client.close()
