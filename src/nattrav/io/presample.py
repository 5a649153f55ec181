"""A warm connect's first STUN requests, sent before nattrav-fast imports Trio and the crypto stack
(issue 13): their round trip runs during the ~0.1 s of imports instead of after them.

A warm connect's punch socket first asks the rendezvous server's observation port where it sees
us, then the STUN server and its second address (as the behaviour cache names them) for its
mappings: api/udp.py `_sample`. `begin()` (cli/launch.py) binds a socket as api/udp.py binds the
punch socket and sends those same requests, in the same order, with the same gaps. One place owns
the socket at a time: api/udp.open_endpoint `take()`s it when its own sampling would send exactly
those requests to exactly there from such a socket, and adopts them (their transaction IDs and send
times) into its transactions. Anything else closes it, its flows with it, and the punch socket is
made and measured as always: the early socket never serves anything but the requests it sent.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any

from ..cache_doc import MAX_AGE
from .early_slot import Slot, drain
from .fresh_port import fresh_udp

Address = tuple[str, int]
SAMPLE_GAP = 0.001  # api/udp.py _sample's: none after the observation, then this before each sample after the first


class EarlySamples:
    """The bound socket and the requests it sent: (request message, destination, time.monotonic()
    when it left), the observation's first when there is one."""

    def __init__(self, sock: socket.socket, src_ip: str | None, observe: Address | None, targets: list[Address],
                 sent: list[tuple[Any, Address, float]]):
        self.sock = sock
        self.src_ip = src_ip
        self.observe = observe
        self.targets = targets
        self.sent = sent

    def queued(self, most: int = 64) -> list[tuple[bytes, Any]]:
        """The datagrams already waiting on the socket (replies that came during the imports)."""
        return drain(lambda: self.sock.recvfrom(65536), most)

    def close(self) -> None:
        self.sock.close()


_slot: Slot[EarlySamples] = Slot()


def begin(src_ip: str | None, stun: Address, observe: Address | None, other: Address | None) -> bool:
    """Bind a UDP socket to `src_ip` (any address when None), port 0, and send the warm sampling's
    requests: the observation to `observe` (if given), a Binding to `stun`, then one to `other` (if
    given). Kept for take(); False (nothing kept) when the socket cannot be bound."""
    discard()
    from ..proto.rendezvous.observe import observe_request  # the wire's one encoder, as the sampling's
    from ..proto.stun import binding_request

    try:
        sock = fresh_udp(src_ip)  # not a port an older flow of ours still holds on the NAT
    except OSError:
        return False
    sock.setblocking(False)
    targets = [stun] + ([other] if other else [])
    jobs = ([(observe_request(), observe)] if observe else []) + [(binding_request(), t) for t in targets]
    first_sample = 1 if observe else 0
    sent = []
    for i, (msg, dest) in enumerate(jobs):
        if i > first_sample:
            time.sleep(SAMPLE_GAP)
        at = time.monotonic()
        try:
            sock.sendto(msg.encode(), dest)
        except OSError:
            pass  # as a failed first send in run_transactions: retransmitted on schedule once adopted
        sent.append((msg, dest, at))
    _slot.put(EarlySamples(sock, src_ip, observe, targets, sent))
    return True


def take(src_ip: str | None, src_port: int, stun: Address, observe: Address | None) -> EarlySamples | None:
    """The early socket when it was bound as the punch socket would be (`src_ip`, an ephemeral port)
    and sampled `stun` with this `observe`: the caller owns it now (and still checks its second
    target). None otherwise, and one that does not match is closed."""
    return _slot.take(lambda early: src_port == 0 and early.src_ip == src_ip and early.targets[0] == stun
                      and early.observe == observe)


def discard() -> None:
    _slot.discard()


def pending() -> EarlySamples | None:
    return _slot.held


def local_ip(towards: Address) -> str | None:
    """The local address the kernel sends from towards `towards` (a connected UDP socket tells,
    nothing is sent), as io/stun_discover.local_address finds it."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(towards)
            return probe.getsockname()[0]
    except OSError:
        return None


def cached_second_address(doc: dict[str, Any], local: str, stun: Address, now: float | None = None) -> Address | None:
    """Where a warm connect will take its second sample: the OTHER-ADDRESS of the newest entry the
    cache file `doc` (cache_doc.read_doc) holds for `local` and `stun`, when that entry is young
    enough and keeps its hop trace (else the connect traces and samples later, or measures: nothing
    goes early). A hint only: api/behavior_cache's guess(), with all its checks, decides, and a
    socket whose hint it does not confirm is closed."""
    now = time.time() if now is None else now
    entries = doc.get("entries")
    if not isinstance(entries, dict):
        return None
    head, tail = f"{local}|", f"|{stun[0]}:{stun[1]}"
    best: dict | None = None
    best_saved = -1.0
    for text, raw in entries.items():
        if not (isinstance(text, str) and text.startswith(head) and text.endswith(tail) and isinstance(raw, dict)):
            continue
        saved = raw.get("saved")
        if not isinstance(saved, (int, float)) or isinstance(saved, bool) or not 0 <= now - saved <= MAX_AGE:
            continue
        if saved >= best_saved:
            best, best_saved = raw, float(saved)
    if best is None or not isinstance(best.get("trace"), dict) or not isinstance(best.get("behavior"), dict):
        return None
    other = best["behavior"].get("other_address")
    try:
        ip, port = other
        ipaddress.IPv4Address(ip)
        if type(port) is not int or not 0 < port <= 65535:
            return None
    except (TypeError, ValueError):
        return None
    return (ip, port)
