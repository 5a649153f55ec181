"""The UDP path through the relay, and its upgrade in place to a direct one (as Tailscale moves from
DERP to a direct path): `RelayedPath`.

Only one peer holds a TURN allocation: the one that asked for the session (the "first" side; its
offer names the relayed address). The other peer needs no TURN at all: it sends to that relayed
address from its punch socket, as to any UDP peer, and its NAT lets the answers in because they come
back from where it sent. The allocating side learns from the relay where the peer's packets come
from (the Data indication's peer address) and answers there, on a channel once it is bound.

Every frame is the punch handshake's (proto/handshake.py) under a key of its own for the relay
phase, so nothing from the punch attempt can be replayed into it. The second side sends HELLOs
through the relay until an ACK comes back: then both sides have an authenticated path. From then on
both keep trying the direct way, a HELLO now and then to the peer's public endpoint (only at the IP
where the rendezvous server saw the peer): an ACK or CONFIRM that comes back directly proves the
direct path works both ways, and from that moment everything is sent directly. Frames keep being
accepted from both routes, so nothing in flight is lost at the switch, and whatever rides on the
path -- datagrams (`send`/`receive`) or QUIC (`quic_wire`) -- carries on without noticing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..core.errors import ICMP_ERRNOS
from ..errors import BadPacket, RelayError
from ..proto.handshake import MAGIC, MAX_DATA, MAX_FRAME, Event, Handshake
from ..proto.stun_attrs import Address
from ..proto.vocab import Strategy
from .path import RECV_SIZE, now_ns
from .quic_wire import grow_buffers
from .turn import TurnLink

HELLO_EVERY = 0.2  # seconds between HELLOs through the relay until the peer answers
PROBE_FIRST, PROBE_MAX = 1.0, 5.0  # direct probes: the first after this long, then slower up to this
KEEPALIVE_EVERY = 15.0
QUEUE = 4096  # datagrams waiting for the application (a full queue drops, as a socket would)


def relay_key(session_key: bytes) -> bytes:
    """The relay phase's handshake key: frames of the punch attempt never pass in it."""
    return hmac.new(bytes(session_key), b"nattrav relay v1", hashlib.sha256).digest()


class _Queue:
    """Datagrams for one consumer (receive() or the QUIC wire), bounded, with a wake-up."""

    def __init__(self) -> None:
        self.items: deque[bytes] = deque()
        self.ready = trio.Event()
        self.dropped = 0

    def put(self, data: bytes) -> None:
        if len(self.items) >= QUEUE:
            self.dropped += 1
            return
        self.items.append(data)
        self.ready.set()

    async def wait(self) -> None:
        while not self.items:
            self.ready = trio.Event()
            await self.ready.wait()


class RelayedPath:
    """An authenticated UDP path to the peer through the relay, upgraded in place when a direct
    path appears. Use as an async context manager inside a nursery that runs `run()` (the API
    does both); `via` says "relay" or "direct", `events` records the switch."""

    strategy = Strategy.RELAY

    def __init__(self, sock: Any, session_key: bytes, role: str, nonce: bytes, *, peer_ip: str,
                 direct: list[Address], link: TurnLink | None = None, relayed: Address | None = None,
                 peer_ips: Sequence[str] = (),
                 emit: Callable[[str, dict[str, Any]], None] | None = None, reason: str = "",
                 probe_first: float = PROBE_FIRST, probe_max: float = PROBE_MAX) -> None:
        if (link is None) == (relayed is None):
            raise ValueError("the allocating side passes its TurnLink, the other the peer's relayed address")
        self.handshake = Handshake(relay_key(session_key), role, nonce)
        # a descriptor of our own on the punch socket: sync sends, and closing ours keeps the caller's
        self._sock = socket.socket(fileno=os.dup(sock.fileno()))
        self._sock.setblocking(False)
        grow_buffers(self._sock)
        if link is not None and hasattr(link, "sock"):
            grow_buffers(link.sock)
        self._caller_sock = sock
        self.peer_ip = peer_ip
        # (allocating side) every IP the rendezvous server saw the peer on, its TCP connection's
        # first: a symmetric NAT with an address pool may send the peer's flow to our relayed
        # address from any of them (api/pool_survey.py), and a permission is per IP (RFC 8656 §9)
        self.permitted = list(dict.fromkeys([peer_ip, *peer_ips]))
        self.direct_candidates = [(peer_ip, int(port)) for _ip, port in direct]  # only where the server saw it
        self.link = link
        self.relayed = relayed  # the peer's relayed address (second side)
        self.peer_via_relay: Address | None = None  # (first side) where the relay says the peer's packets come from
        self.direct_addr: Address | None = None
        self.reason = reason
        self.emit = emit or (lambda phase, detail: None)
        self.probe_first, self.probe_max = probe_first, probe_max
        self.established = trio.Event()
        self.upgraded = trio.Event()
        self.closed_by_peer = False
        self.dead: str | None = None
        self.rtt: float = 0.0
        self.counters: Counter[str] = Counter()
        self._data = _Queue()  # DATA frames' payloads, for receive()
        self._raw = _Queue()  # other datagrams (QUIC), for the wire
        self._channel_wanted = trio.Event()  # the relay named the peer's address: bind a channel

    # -- what the caller sees

    @property
    def via(self) -> str:
        return "direct" if self.direct_addr is not None else "relay"

    @property
    def peer_addr(self) -> Address:
        """Where our packets go now: the peer directly, or the relay."""
        if self.direct_addr is not None:
            return self.direct_addr
        return self.relayed if self.relayed is not None else (self.link.relayed if self.link else ("0.0.0.0", 0))

    @property
    def stats(self) -> dict[str, Any]:
        out = dict(self.counters)
        out["via"] = self.via
        out["rejected"] = self.handshake.rejected
        out["dropped"] = self._data.dropped + self._raw.dropped
        if self.link is not None:
            out["turn"] = dict(self.link.client.stats)
        return out

    # -- running

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Everything in the background, until cancelled: reading, the relay's upkeep (the peer's
        permission first), the HELLOs until established, direct probes until upgraded, keepalives."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_socket)
            if self.link is not None:
                self.link.on_data = self._from_relay
                nursery.start_soon(self._serve_link)
                nursery.start_soon(self._permit_peer)
            else:
                nursery.start_soon(self._hello_through_relay)
            nursery.start_soon(self._probe_direct)
            nursery.start_soon(self._keepalives)
            task_status.started()

    async def _permit_peer(self) -> None:
        """(allocating side) the relay passes nothing from an IP without a permission: only the
        peer's, those the rendezvous server saw."""
        assert self.link is not None
        try:
            await self.link.permit(self.permitted)
        except RelayError as exc:
            self.dead = f"the relay refused a permission for the peer: {exc}"
            self._data.ready.set()

    async def wait_established(self, timeout: float) -> None:
        """Until the peer answered through the relay; RelayError saying what was missing after
        `timeout` seconds."""
        with trio.move_on_after(timeout):
            while not self.established.is_set() and self.dead is None:
                with trio.move_on_after(0.1):
                    await self.established.wait()
        if not self.established.is_set():
            raise RelayError(self.dead or self._silence())

    def _silence(self) -> str:
        if self.link is not None:
            if self.link.failed:
                return f"the relay failed: {self.link.failed}"
            return ("the peer never came through the relay (nothing from it reached our allocation "
                    f"{self.link.relayed[0]}:{self.link.relayed[1]})")
        assert self.relayed is not None
        return f"no answer through the relay {self.relayed[0]}:{self.relayed[1]} (is the peer's allocation gone?)"

    async def _serve_link(self) -> None:
        assert self.link is not None
        try:
            await self.link.serve()
        except Exception as exc:  # the relay's upkeep must not take the application down with it
            self.dead = f"the relay link failed: {exc}"

    # -- sending

    def _send_frame(self, frame: bytes, route: str | Address | None = None) -> None:
        """To the current route, or to `route` ("relay" or a direct address)."""
        target = route if route is not None else (self.direct_addr or "relay")
        if target == "relay":
            if self.link is not None:
                if self.peer_via_relay is None:
                    self.counters["unsent_no_peer_yet"] += 1
                    return
                self.link.send_to(self.peer_via_relay, frame)
            else:
                self._sendto(frame, self.relayed)
        else:
            self._sendto(frame, target)  # type: ignore[arg-type]

    def _sendto(self, data: bytes, addr: Address | None) -> None:
        if addr is None:
            return
        try:
            self._sock.sendto(data, addr)
        except BlockingIOError:
            self.counters["send_full"] += 1
        except OSError as exc:
            if exc.errno not in ICMP_ERRNOS:
                self.counters["send_errors"] += 1

    async def send(self, data: bytes) -> None:
        """A payload as authenticated DATA frames (split at MAX_DATA), on the current route."""
        data = bytes(data)
        for i in range(0, max(len(data), 1), MAX_DATA):
            self._send_frame(self.handshake.data(data[i:i + MAX_DATA]))
        await trio.lowlevel.checkpoint()

    def send_raw(self, data: bytes) -> None:
        """One datagram as it is (QUIC's), on the current route, now or never."""
        self._send_frame(data)

    async def send_raw_waiting(self, data: bytes) -> None:
        """One datagram as it is, on the current route, waiting for room in the socket buffer
        (a bulk sender's datagrams are not dropped on our side)."""
        if self.direct_addr is None and self.link is not None:
            if self.peer_via_relay is None:
                self.counters["unsent_no_peer_yet"] += 1
                return
            await self.link.send(self.peer_via_relay, data)
            return
        addr = self.direct_addr or self.relayed
        while True:
            try:
                self._sock.sendto(data, addr)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
            except OSError as exc:
                if exc.errno not in ICMP_ERRNOS:
                    self.counters["send_errors"] += 1
                return

    async def send_keepalive(self) -> None:
        self._send_frame(self.handshake.keepalive())
        await trio.lowlevel.checkpoint()

    async def serve_keepalives(self, interval: float = KEEPALIVE_EVERY) -> None:
        """PunchedPath's API: run() already keeps the path alive, so this just waits."""
        await trio.sleep_forever()

    # -- receiving

    async def receive(self) -> bytes:
        """The next payload from the peer (whichever route it took); b"" once the peer closed."""
        while True:
            if self._data.items:
                return self._data.items.popleft()
            if self.closed_by_peer:
                return b""
            if self.dead is not None:
                raise RelayError(self.dead)
            await self._data.wait()

    def _from_relay(self, peer: Address, data: bytes) -> None:
        """(first side) what the relay passed on from `peer`."""
        if peer[0] not in self.permitted:
            self.counters["relay_foreign"] += 1  # a permission is per IP: only the peer's count
            return
        self._incoming(data, "relay", peer)

    async def _read_socket(self) -> None:
        while True:
            try:
                await trio.lowlevel.wait_readable(self._sock)
            except trio.ClosedResourceError:
                return
            for _ in range(64):
                try:
                    data, src = self._sock.recvfrom(RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in ICMP_ERRNOS:
                        continue
                    self.dead = f"receive failed: {exc.strerror or exc}"
                    self._data.ready.set()
                    return
                src = (src[0], src[1])
                if self.relayed is not None and src == self.relayed:
                    self._incoming(data, "relay", src)
                elif src[0] == self.peer_ip:
                    self._incoming(data, "direct", src)
                else:
                    self.counters["foreign"] += 1
            await trio.lowlevel.checkpoint()

    def _incoming(self, data: bytes, route: str, src: Address) -> None:
        if data[:2] == MAGIC and len(data) <= MAX_FRAME:
            try:
                got = self.handshake.receive(data, now_ns())
            except BadPacket:
                got = None  # not ours after all: maybe QUIC's, whose short header can start so
            if got is not None:
                self._handshake_event(got, route, src)
                return
        if not self.established.is_set():
            self.counters["early"] += 1  # nothing reaches the application before the handshake
            return
        self.counters[f"in_{route}"] += 1
        self._raw.put(data)

    def _handshake_event(self, got: Any, route: str, src: Address) -> None:
        reply_route: str | Address = "relay" if route == "relay" else src
        if route == "relay" and self.link is not None and self.peer_via_relay != src:
            self.peer_via_relay = src  # where the relay saw the peer: our answers go there
            self._channel_wanted.set()
        for reply in got.replies:
            self._send_frame(reply, reply_route)
        if got.event in (Event.ESTABLISHED, Event.ACK):
            if got.rtt is not None:
                self.rtt = got.rtt / 1e9
            if route == "relay" and not self.established.is_set():
                self.established.set()
                self.emit("relay-connected", {"relay": list(self.peer_addr), "rtt_ms": round(self.rtt * 1e3, 2)})
            elif route == "direct" and self.direct_addr is None:
                # an ACK or CONFIRM that echoes our nonce came straight from the peer: our HELLO
                # reached it directly and its answer reached us directly
                self.direct_addr = src
                self.established.set()
                self.upgraded.set()
                self.emit("upgrade", {"peer": list(src), "rtt_ms": round(self.rtt * 1e3, 2),
                                      "from": "relay"})
        elif got.event is Event.HELLO and route == "relay" and self.link is not None:
            pass  # answered above; the second side's CONFIRM will establish us
        elif got.event is Event.DATA:
            if self.established.is_set() or route == "direct":
                self.counters[f"in_{route}"] += 1
                if got.payload:
                    self._data.put(got.payload)
        elif got.event is Event.CLOSE:
            self.closed_by_peer = True
            self._data.ready.set()
            self._raw.ready.set()

    # -- background work

    async def _hello_through_relay(self) -> None:
        """(second side) HELLOs to the peer's relayed address until the peer answers."""
        while not self.established.is_set():
            self._send_frame(self.handshake.hello(now_ns()), "relay")
            self.counters["relay_hellos"] += 1
            with trio.move_on_after(HELLO_EVERY):
                await self.established.wait()

    async def _probe_direct(self) -> None:
        """HELLOs straight to the peer now and then, until one is answered straight back."""
        await self.established.wait()
        wait = self.probe_first
        while not self.upgraded.is_set() and self.direct_candidates:
            with trio.move_on_after(wait):
                await self.upgraded.wait()
                return
            for addr in self.direct_candidates:
                self._send_frame(self.handshake.hello(now_ns()), addr)
                self.counters["direct_probes"] += 1
            wait = min(self.probe_max, wait * 1.5)

    async def _keepalives(self) -> None:
        """A channel to the peer once the relay showed where it is (4-byte headers instead of a
        36-byte indication), and a keepalive when nothing was sent for a while."""
        while True:
            with trio.move_on_after(KEEPALIVE_EVERY):
                await self._channel_wanted.wait()
            if self._channel_wanted.is_set():
                self._channel_wanted = trio.Event()
                if self.link is not None and self.peer_via_relay is not None:
                    try:
                        await self.link.bind(self.peer_via_relay)
                    except RelayError as exc:
                        self.counters["channel_failed"] += 1
                        self.emit("relay-note", {"note": f"no channel, Send indications instead: {exc}"})
                continue
            if self.established.is_set():
                self._send_frame(self.handshake.keepalive())

    @asynccontextmanager
    async def open(self, timeout: float) -> AsyncIterator[RelayedPath]:
        """Run the path in the background, wait until the peer answered through the relay (RelayError
        after `timeout`), yield it; on leaving, tell the peer (CLOSE) and release the allocation.
        The caller's own exception leaves as itself, not inside an exception group."""
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.run)
                try:
                    await self.wait_established(timeout)
                    yield self
                except BaseException as exc:
                    failure = exc
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()
        if failure is not None:
            raise failure

    # -- QUIC rides on it

    def quic_wire(self, counters: Counter[str]) -> RelayWire:
        """The wire io/quic_path.py's driver reads and writes (instead of the punched socket)."""
        return RelayWire(self, counters)

    # -- closing

    async def aclose(self) -> None:
        if self._sock.fileno() == -1:
            return  # closed already
        try:
            if not self.handshake.closed and self.established.is_set():
                self._send_frame(self.handshake.close())
        finally:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
            self._caller_sock.close()
            if self.link is not None:
                with trio.CancelScope(shield=True):
                    await self.link.aclose()

    async def __aenter__(self) -> RelayedPath:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class RelayWire:
    """io/quic_wire.PeerSocket's interface over a RelayedPath: QUIC's datagrams in from whichever
    route, out on the current one (no GSO: the relay's framing is per datagram)."""

    gso = False

    def __init__(self, path: RelayedPath, counters: Counter[str]) -> None:
        self.path = path
        self.counters = counters
        self.closed = False

    async def wait_readable(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("the wire is closed")
        await self.path._raw.wait()
        if self.closed:
            raise trio.ClosedResourceError("the wire is closed")

    def received(self) -> Iterator[bytes]:
        q = self.path._raw.items
        for _ in range(64):
            if not q:
                return
            self.counters["datagrams_in"] += 1
            yield q.popleft()

    def send_now(self, data: bytes) -> None:
        self.path.send_raw(data)

    async def send(self, datagrams: list[bytes]) -> None:
        for data in datagrams:
            await self.path.send_raw_waiting(data)
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        self.closed = True
        self.path._raw.ready.set()


__all__ = ["RelayWire", "RelayedPath", "relay_key"]
