"""One STUN client transaction as a sans-IO state machine (RFC 8489 §6.2.1 retransmission).

The driver owns the socket and the clock: it sends `start(now)`'s bytes, feeds every datagram to
`receive(data, src, now)`, and calls `timeout(now)` when `deadline` passes. The transaction never
touches a socket or a clock, so the schedule is tested exactly.

Every reply is validated: it must parse, carry our transaction ID, be a response (not a request),
and come from an address we expect -- the one we sent to, or, for a CHANGE-REQUEST, the address the
server told us it would answer from. Anything else is discarded and counted by reason; the last
point is what tells a NAT that filters from a server that ignores CHANGE-REQUEST.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import BadPacket
from .stun import Message, parse
from .stun_attrs import Address, Attr, Class, ErrorCode

RTO = 0.5  # RFC 8489: initial retransmission timeout, seconds
RC = 7  # requests sent in all
RM = 16  # wait Rm * RTO after the last request


class State(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"


@dataclass
class BindingResult:
    """What a validated Binding success (or error) response told us."""

    mapped: Address | None
    source: Address  # where the response actually came from
    response_origin: Address | None
    other_address: Address | None  # RFC 5780 OTHER-ADDRESS, or RFC 3489 CHANGED-ADDRESS
    error: ErrorCode | None
    rtt: float
    attempts: int
    message: Message = field(repr=False)
    # a one-IP server's second port (nattrav's OTHER-PORT); only read when there is no OTHER-ADDRESS
    other_port: int | None = None
    received_at: float = 0.0  # the driver's clock when the reply arrived
    # the driver's clock when the FIRST request left: a NAT makes the mapping for its first packet
    # (a loss is far likelier past the NAT than on the LAN), so this, not the answered
    # retransmission (received_at - rtt), dates the mapping
    first_sent_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.mapped is not None


def _norm(addr: Address) -> Address:
    # recvfrom on an IPv6 socket gives 4-tuples; compare (ip, port) only
    return (str(addr[0]), int(addr[1]))


class Transaction:
    """One request, its retransmissions and its validated reply."""

    def __init__(
        self,
        request: Message,
        dest: Address,
        *,
        accept_from: Iterable[Address] | None = None,
        rto: float = RTO,
        rc: int = RC,
        rm: int = RM,
    ) -> None:
        if rc < 1 or rto <= 0 or rm < 1:
            raise ValueError("need rc >= 1, rm >= 1 and rto > 0")
        self.request = request
        self.dest = _norm(dest)
        self.accept_from = {_norm(a) for a in accept_from} if accept_from else {self.dest}
        self.rto, self.rc, self.rm = rto, rc, rm
        self.state = State.IDLE
        self.sent = 0
        self.deadline: float | None = None
        self.result: BindingResult | None = None
        self.discarded: Counter[str] = Counter()
        # sources of replies carrying our ID that came from an unexpected address: the evidence
        # that a server ignored CHANGE-REQUEST (or that someone is spoofing)
        self.unexpected_sources: list[Address] = []
        self._wire = request.encode()
        self._started_at = 0.0
        self._last_sent_at = 0.0

    @property
    def wire(self) -> bytes:
        return self._wire

    def start(self, now: float) -> bytes:
        if self.state is not State.IDLE:
            raise RuntimeError("transaction already started")
        self.state = State.WAITING
        self._started_at = now
        return self._send(now)

    def _send(self, now: float) -> bytes:
        self.sent += 1
        self._last_sent_at = now
        if self.sent < self.rc:
            # intervals RTO, 2 RTO, 4 RTO, ...: sends at 0, RTO, 3 RTO, 7 RTO, ...
            self.deadline = now + self.rto * (2 ** (self.sent - 1))
        else:
            self.deadline = now + self.rto * self.rm
        return self._wire

    def timeout(self, now: float) -> bytes | None:
        """Call when now >= deadline: the bytes to retransmit, or None when the transaction failed."""
        if self.state is not State.WAITING or self.deadline is None or now < self.deadline:
            return None
        if self.sent >= self.rc:
            self.state = State.FAILED
            self.deadline = None
            return None
        return self._send(now)

    def receive(self, data: bytes, src: Address, now: float) -> BindingResult | None:
        """Feed one datagram that arrived on the socket; returns the result when it is our reply."""
        if self.state is not State.WAITING:
            self.discarded["late"] += 1
            return None
        try:
            msg = parse(data)
        except BadPacket:
            self.discarded["bad_packet"] += 1
            return None
        if msg.transaction_id != self.request.transaction_id:
            self.discarded["wrong_transaction"] += 1
            return None
        if msg.cls not in (Class.SUCCESS, Class.ERROR) or msg.method != self.request.method:
            self.discarded["not_a_response"] += 1
            return None
        src = _norm(src)
        if src not in self.accept_from:
            self.discarded["wrong_source"] += 1
            self.unexpected_sources.append(src)
            return None
        if msg.fingerprint_present() and not msg.check_fingerprint():
            self.discarded["bad_fingerprint"] += 1
            return None
        other = msg.get(Attr.OTHER_ADDRESS) or msg.get(Attr.CHANGED_ADDRESS)
        origin = msg.get(Attr.RESPONSE_ORIGIN) or msg.get(Attr.SOURCE_ADDRESS)
        self.result = BindingResult(
            mapped=msg.mapped_address,
            source=src,
            response_origin=origin,
            other_address=other,
            error=msg.get(Attr.ERROR_CODE) if msg.cls == Class.ERROR else None,
            rtt=now - self._last_sent_at,
            attempts=self.sent,
            message=msg,
            other_port=msg.get(Attr.OTHER_PORT) if other is None else None,
            received_at=now,
            first_sent_at=self._started_at,
        )
        if msg.cls == Class.SUCCESS and self.result.mapped is None:
            self.discarded["no_mapped_address"] += 1
            self.result = None
            return None
        self.state = State.DONE
        self.deadline = None
        return self.result


def expected_source(dest: Address, other: Address | None, change_ip: bool, change_port: bool) -> Address | None:
    """Where the answer to a CHANGE-REQUEST must come from, given the server's OTHER-ADDRESS."""
    if not change_ip and not change_port:
        return _norm(dest)
    if other is None:
        return None
    return (other[0] if change_ip else dest[0], other[1] if change_port else dest[1])


__all__ = [
    "RC",
    "RM",
    "RTO",
    "BindingResult",
    "State",
    "Transaction",
    "expected_source",
]
