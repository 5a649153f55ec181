"""TCP traversal pieces over loopback (no NAT, no root): STUN over TCP, the punch executor's
authentication, connect_tcp()/listen_tcp() through a real nattrav-server, and nattrav-fast --tcp."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrav.api import connect_tcp, listen_tcp
from tests.test_fast_cli import pipe_pair
from nattrav.errors import LocalProtocolError, TcpPunchFailed
from nattrav.io.stun_tcp import StunTcpServer, read_message, serve_stun_tcp, tcp_binding, tcp_mappings
from nattrav.io.tcp_punch import PunchedStream, open_listener, tcp_punch
from nattrav.proto.planner.tcp import plan
from nattrav.proto.report import TcpReport, TcpSample
from nattrav.proto.stun import Message, parse
from nattrav.proto.stun_attrs import Attr, ChangeRequest, Class, Method
from nattrav.proto.stun_server import StunServerConfig
from nattrav.proto.vocab import TcpStrategy
from tests.conftest import free_port_pair

FAST = [sys.executable, "-m", "nattrav.cli.fast", "--plain"]  # our test servers have no certificate


async def _stun_tcp(nursery):
    port, alt = free_port_pair()
    cfg = StunServerConfig(ip="127.0.0.1", port=port, alt_port=alt)
    srv = await nursery.start(serve_stun_tcp, cfg, [("127.0.0.1", port), ("127.0.0.1", alt)])
    return srv, port, alt


async def test_stun_over_tcp_maps_the_shared_port_for_every_server():
    async with trio.open_nursery() as nursery:
        srv, port, alt = await _stun_tcp(nursery)
        holder = open_listener(("127.0.0.1", 0))  # holds the port, as a punch endpoint does
        local = holder.getsockname()
        try:
            servers = [("127.0.0.1", port), ("127.0.0.1", alt)]
            samples = await tcp_mappings(local, servers)
            # the same endpoint twice at once would be one 4-tuple twice: refused before any SYN
            with pytest.raises(LocalProtocolError):
                await tcp_mappings(local, servers + servers[:1])
        finally:
            holder.close()
        # no NAT on loopback: every connection left from, and was seen at, the one shared port
        assert [s["port"] for s in samples] == [local[1]] * 2
        assert [s["dest"] for s in samples] == [list(x) for x in servers]
        assert all(s["ip"] == "127.0.0.1" == s["local_ip"] for s in samples)
        assert srv.stats["answered"] == 2
        nursery.cancel_scope.cancel()


async def test_stun_over_tcp_probes_leave_back_to_back():
    """Every probe's SYN leaves before any answer is awaited (a sequential NAT's step is only Δ when
    no other flow lands between two probes): a server that answers none of the connections until all
    of them are open still answers all, and in the order of the servers list."""
    port, alt = free_port_pair()
    cfg = StunServerConfig(ip="127.0.0.1", port=port, alt_port=alt)
    srv = StunTcpServer(cfg)
    endpoints = [("127.0.0.1", port), ("127.0.0.1", alt), ("127.0.0.2", port)]
    opened: list[tuple] = []
    all_open = trio.Event()

    async def handle(stream: trio.SocketStream) -> None:
        src, at = stream.socket.getpeername()[:2], stream.socket.getsockname()[:2]
        opened.append(at)
        if len(opened) == len(endpoints):
            all_open.set()
        data = await read_message(stream, bytearray())
        await all_open.wait()
        await stream.send_all(srv.answer(data, src, at))
        await trio.sleep_forever()  # the client closes

    async with trio.open_nursery() as nursery:
        for ip, p in endpoints:
            lst = (await trio.open_tcp_listeners(p, host=ip))[0]
            nursery.start_soon(trio.serve_listeners, handle, [lst])
        holder = open_listener(("127.0.0.1", 0))
        try:
            with trio.fail_after(10):  # serial probes would wait forever for the first answer
                samples = await tcp_mappings(holder.getsockname(), endpoints, timeout=5)
        finally:
            holder.close()
        assert [tuple(s["dest"]) for s in samples] == endpoints
        assert sorted(opened) == sorted(endpoints) and srv.stats["answered"] == 3
        nursery.cancel_scope.cancel()


async def _raw_exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        got = b""
        with trio.move_on_after(2):
            while True:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                got += chunk
                if len(got) >= 20 and len(got) >= 20 + struct.unpack_from("!H", got, 2)[0]:
                    break
        return got


async def test_stun_tcp_server_refuses_change_request_and_drops_garbage():
    async with trio.open_nursery() as nursery:
        srv, port, _ = await _stun_tcp(nursery)
        req = Message(Method.BINDING, Class.REQUEST).add(Attr.CHANGE_REQUEST, ChangeRequest(True, False))
        resp = parse(await _raw_exchange(port, req.encode()))
        assert resp.cls == Class.ERROR and resp.get(Attr.ERROR_CODE).code == 400
        # a length no STUN message has: the connection is closed without an answer
        assert await _raw_exchange(port, b"\x00\x01\xff\xff" + b"\x00" * 16) == b""
        assert srv.stats["malformed"] == 1
        nursery.cancel_scope.cancel()


async def test_tcp_binding_to_closed_port_is_a_clean_error():
    port, _ = free_port_pair()
    with pytest.raises(OSError) as info:
        await tcp_binding(("127.0.0.1", 0), ("127.0.0.1", port), timeout=2)
    assert str(port) in str(info.value)


def _open_report(sock) -> TcpReport:
    ip, port = sock.getsockname()[:2]
    return TcpReport(local=(ip, port), samples=(TcpSample(ip, port),) * 2)


async def _punch_pair(key_a: bytes, key_b: bytes, timeout: float = 3.0):
    la, lb = open_listener(("127.0.0.1", 0)), open_listener(("127.0.0.1", 0))
    ra, rb = _open_report(la), _open_report(lb)
    pa, pb = plan(ra, rb, "first"), plan(rb, ra, "second")
    assert pa.accept and pb.targets  # both open: the second side connects to the first's listener
    start = trio.current_time() + 0.05
    results = {}

    async def side(name, lst, p, key):
        try:
            results[name] = await tcp_punch(lst, p, key, start, timeout=timeout)
        except TcpPunchFailed as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", la, pa, key_a)
        nursery.start_soon(side, "b", lb, pb, key_b)
    return results


async def test_punch_hands_over_an_authenticated_stream_with_trailing_bytes_intact():
    key = os.urandom(32)
    r = await _punch_pair(key, key)
    a, b = r["a"], r["b"]
    assert isinstance(a, PunchedStream) and isinstance(b, PunchedStream)
    assert isinstance(a, trio.abc.HalfCloseableStream)
    assert a.strategy is TcpStrategy.DIRECT and (a.via, b.via) == ("listener", "connect")
    assert a.peer_addr == b.local_addr and b.peer_addr == a.local_addr
    async with a, b:
        await b.send_all(b"hello over tcp")
        await b.send_eof()
        got = b""
        while chunk := await a.receive_some(3):
            got += chunk
        assert got == b"hello over tcp"


async def test_punch_with_the_wrong_key_fails_with_a_reason():
    r = await _punch_pair(os.urandom(32), os.urandom(32), timeout=1.0)
    for side in ("a", "b"):
        assert isinstance(r[side], TcpPunchFailed), r[side]
    assert "failed authentication" in str(r["a"]) and "tcp-direct" in str(r["a"])


async def test_connect_tcp_and_listen_tcp_move_a_megabyte_each_way(servers):
    blob_a, blob_b = os.urandom(1 << 20), os.urandom(1 << 20)
    events: list[str] = []
    got: dict[str, bytes] = {}

    async def exchange(stream, blob, name):
        async def reader():
            buf = bytearray()
            while chunk := await stream.receive_some(65536):
                buf += chunk
            got[name] = bytes(buf)

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await stream.send_all(blob)
            await stream.send_eof()

    with trio.fail_after(30):
        async with listen_tcp(servers["server"], stun=servers["stun"],
                              on_event=lambda ph, d: events.append(ph)) as lst:
            async with trio.open_nursery() as nursery:

                async def listener_side():
                    async with lst.accept() as s:
                        await exchange(s, blob_b, "b")

                nursery.start_soon(listener_side)
                async with connect_tcp(servers["server"], lst.peer_id, stun=servers["stun"]) as s:
                    # TLS by default: the stream under it is the punched one
                    assert s.punched.strategy is TcpStrategy.DIRECT and s.punched.rtt >= 0
                    assert s.peer_id.text == lst.peer_id and s.peer_key == s.peer_id.key_bytes
                    await exchange(s, blob_a, "a")
    assert hashlib.sha256(got["b"]).digest() == hashlib.sha256(blob_a).digest()
    assert hashlib.sha256(got["a"]).digest() == hashlib.sha256(blob_b).digest()
    for phase in ("tcp-mapping", "enrolled", "offer", "plan", "punch", "connected"):
        assert phase in events, (phase, events)


def test_nattrav_fast_tcp_pipes_both_ways(servers):
    host, port = servers["server"]
    common = ["-s", f"{host}:{port}", "-H", f"{servers['stun'][0]}:{servers['stun'][1]}", "--json", "--tcp"]
    a, peer_id = pipe_pair(FAST, common)
    events = [json.loads(x) for x in a.stderr.decode().splitlines()]
    connected = next(e for e in events if e["event"] == "connected")
    assert connected["strategy"] == "tcp-direct"
    assert next(e for e in events if e["event"] == "secure") == {"event": "secure", "protocol": "tls",
                                                                 "peer_id": peer_id}


class _Chunks(trio.abc.ReceiveStream):
    def __init__(self, chunks):
        self.chunks = list(chunks)

    async def receive_some(self, max_bytes=None):
        await trio.lowlevel.checkpoint()
        return self.chunks.pop(0) if self.chunks else b""

    async def aclose(self):
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=8))
def test_stun_stream_reader_raises_only_badpacket_and_stays_bounded(chunks):
    from nattrav.errors import BadPacket
    from nattrav.io.stun_tcp import MAX_MESSAGE, read_message

    async def main():
        stream, buf = _Chunks(chunks), bytearray()
        for _ in range(20):
            try:
                msg = await read_message(stream, buf)
            except BadPacket:
                return
            if msg is None:
                return
            assert 20 <= len(msg) <= MAX_MESSAGE
        assert len(buf) <= MAX_MESSAGE + 600

    trio.run(main)


async def test_stun_stream_reader_splits_back_to_back_messages():
    from nattrav.io.stun_tcp import read_message

    a = Message(Method.BINDING, Class.REQUEST).encode(fingerprint=True)
    b = Message(Method.BINDING, Class.REQUEST).encode()
    wire = a + b
    stream, buf = _Chunks([wire[:5], wire[5:30], wire[30:]]), bytearray()
    assert await read_message(stream, buf) == a
    assert await read_message(stream, buf) == b
    assert await read_message(stream, buf) is None


async def test_a_probe_set_the_server_reset_is_probed_once_more():
    """A server at its connections for our public address resets the newest (two peers behind one
    NAT probing at once): the set is probed again after a pause, and the samples count from then."""
    from nattrav.api.tcp import RESET_PAUSE, probe_tcp_mappings
    from nattrav.errors import StunTcpError
    from nattrav.io.stun_tcp import close_with_rst

    port, alt = free_port_pair()
    cfg = StunServerConfig(ip="127.0.0.1", port=port, alt_port=alt)
    srv = StunTcpServer(cfg)
    resets = {"left": 1}

    async def handle(stream: trio.SocketStream) -> None:
        if resets["left"]:
            resets["left"] -= 1
            close_with_rst(stream.socket)
            return
        try:
            src, at = stream.socket.getpeername()[:2], stream.socket.getsockname()[:2]
            data = await read_message(stream, bytearray())
            await stream.send_all(srv.answer(data, src, at))
            await trio.sleep_forever()  # the client closes
        except (OSError, trio.BrokenResourceError):
            pass  # the client gave up this set (another probe of it was reset) and reset this one

    events = []
    async with trio.open_nursery() as nursery:
        for p in (port, alt):
            nursery.start_soon(trio.serve_listeners, handle, await trio.open_tcp_listeners(p, host="127.0.0.1"))
        holder = open_listener(("127.0.0.1", 0))
        try:
            with trio.fail_after(10):
                before = trio.current_time()
                samples, started = await probe_tcp_mappings(
                    holder.getsockname()[:2], [("127.0.0.1", port), ("127.0.0.1", alt)],
                    lambda phase, detail: events.append((phase, detail)))
                assert started - before >= RESET_PAUSE
                assert [s["port"] for s in samples] == [holder.getsockname()[1]] * 2
                assert [phase for phase, _ in events] == ["tcp-mapping-retry"]
                # twice reset: the error stands (a server that keeps resetting is not asked forever)
                resets["left"] = 2
                with pytest.raises(StunTcpError):
                    await probe_tcp_mappings(holder.getsockname()[:2], [("127.0.0.1", port)], lambda *a: None)
        finally:
            holder.close()
        nursery.cancel_scope.cancel()
