"""Where the rendezvous server sees a peer's punch socket (UDP), sans-IO.

Why: the planners aim only at addresses the server observed (docs/security.md). The TCP connection
to the server is one address; a NAT with an address pool (RFC 4787 §4.1, "arbitrary" pooling) may
send the punch socket's UDP flows from another address of its pool. So the punch socket asks the
server too, on UDP at the rendezvous port: a STUN Binding request that the server answers with its
XOR-MAPPED-ADDRESS and a ticket, a MAC over that address and an expiry under a key only the server
holds. The peer hands the ticket back over its enrolled TCP connection (an ``observe`` frame); the
server checks it and adds the address to what it publishes about the peer (``observed_udp``).

Hostile peers, and why a round trip (not a one-way datagram carrying a token):
- The ticket goes to the datagram's source address only. A peer that forges the source (to make the
  server record a victim's address as its own) never sees the ticket: return routability, as in
  QUIC's Retry or DTLS's cookie. A token sent one way would let an enrolled peer forge the source.
- The answer is never larger than the request (the client pads it) and each source address gets a
  token bucket of answers, in a bounded table: the port cannot amplify or be used as a reflector.
- The server keeps no state per datagram; a ticket is 24 bytes, expires after TICKET_TTL seconds and
  is checked in constant time. A connection records at most MAX_OBSERVED addresses (the newest win).
- A ticket names an address, not a peer: a peer could present a ticket another host obtained, and
  be aimed at where that host can receive, which that host then chose to allow (it had to pass the
  ticket on). An on-path attacker of an address could do the same, and could anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections import OrderedDict
from typing import Any, Sequence

from ...errors import BadPacket
from ..stun import Message, binding_request, parse
from ..stun_attrs import Attr, Class, Method

# nattrav's own, comprehension-optional, beside OTHER-PORT (stun_attrs.py): the observation ticket
OBSERVE_TICKET = 0xC4E2
TICKET_TTL = 60.0  # seconds a ticket may wait before its peer presents it
# UDP addresses one connection may have recorded: the punch socket's, and those of a symmetric NAT's
# address pool its other flows leave from (a relay's permissions must name them: api/pool_survey.py)
MAX_OBSERVED = 8
_EXPIRY = struct.Struct("!d")
_MAC_BYTES = 16
TICKET_BYTES = _EXPIRY.size + _MAC_BYTES
# the request's PADDING: an IPv6 answer (20 + 24 + 28 = 72 bytes) stays below a padded request (88)
REQUEST_PADDING = 64
MAX_REQUEST = 548  # bigger datagrams are not ours: dropped unparsed
KEY_BYTES = 32


class BadTicket(ValueError):
    """A ticket that is not the server's, is for another address, or expired (the reason says which)."""


def _mac(key: bytes, ip: str, port: int, expires: float) -> bytes:
    msg = b"nattrav-observe-v1|%s|%d|" % (ip.encode(), port) + _EXPIRY.pack(expires)
    return hmac.new(key, msg, hashlib.sha256).digest()[:_MAC_BYTES]


def _norm_ip(ip: Any) -> str:
    addr = ipaddress.ip_address(str(ip).split("%", 1)[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return str(addr)


def make_ticket(key: bytes, addr: tuple[str, int], now: float, ttl: float = TICKET_TTL) -> bytes:
    expires = now + ttl
    return _EXPIRY.pack(expires) + _mac(key, _norm_ip(addr[0]), int(addr[1]), expires)


def check_ticket(key: bytes, addr: Any, ticket: Any, now: float) -> tuple[str, int]:
    """The (ip, port) a valid ticket vouches for; BadTicket otherwise (and only BadTicket)."""
    if type(ticket) is not bytes or len(ticket) != TICKET_BYTES:
        raise BadTicket(f"a ticket is {TICKET_BYTES} bytes")
    if (type(addr) is not list or len(addr) != 2 or type(addr[0]) is not str or type(addr[1]) is not int
            or not 0 < addr[1] < 65536):
        raise BadTicket("addr must be [ip, port]")
    try:
        ip = _norm_ip(addr[0])
    except ValueError:
        raise BadTicket("addr is not an IP literal") from None
    (expires,) = _EXPIRY.unpack_from(ticket)
    if not hmac.compare_digest(ticket[_EXPIRY.size:], _mac(key, ip, addr[1], expires)):
        raise BadTicket("the ticket is not this server's, or is for another address")
    if not now < expires:
        raise BadTicket("the ticket expired")
    return ip, addr[1]


def note_observed(seen: list[list], addr: tuple[str, int], cap: int = MAX_OBSERVED) -> None:
    """Record `addr` in a connection's list: once, the newest last, at most `cap` (the oldest go)."""
    entry = [addr[0], addr[1]]
    if entry in seen:
        seen.remove(entry)
    seen.append(entry)
    del seen[:-cap]


def read_observed(value: Any, cap: int = MAX_OBSERVED) -> list[tuple[str, int]]:
    """The ``observed_udp`` of a peer's node info (the server's word, but carried through a frame):
    the well-formed [ip, port] entries, IP literals only, at most `cap`."""
    out: list[tuple[str, int]] = []
    if not isinstance(value, list):
        return out
    for item in value[:cap]:
        if (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and type(item[1]) is int
                and 0 < item[1] < 65536):
            try:
                out.append((_norm_ip(item[0]), item[1]))
            except ValueError:
                continue
    return out


# --- the server's UDP side --------------------------------------------------------------------------


class SourceBuckets:
    """A token bucket per source IP (`rate` per second, at most `burst`), in a table of at most
    `max_sources` (the least recently heard source goes first): what one source may make a UDP
    port of the server do."""

    def __init__(self, rate: float, burst: float, max_sources: int) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def admit(self, source: str, now: float) -> bool:
        tokens, at = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return ok


class ObserveResponder:
    """Answers observation requests: ``answer(datagram, source, now)`` gives the reply's bytes, or
    None (not a Binding request, too big, too small to answer without amplifying, over the rate).

    rate/burst: answers per second per source IP (a token bucket: a carrier-grade NAT's many
    subscribers share one source; at 100/s of at most 72 bytes a victim of spoofed requests gets
    7 KB/s at most, and no more than the spoofer sent); max_sources bounds the table (the least
    recently heard source goes first)."""

    def __init__(self, key: bytes, *, rate: float = 100.0, burst: float = 200.0, max_sources: int = 4096,
                 ttl: float = TICKET_TTL) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the observation key is {KEY_BYTES} bytes")
        self.key = key
        self.rate, self.burst, self.max_sources, self.ttl = rate, burst, max_sources, ttl
        self._buckets = SourceBuckets(rate, burst, max_sources)
        self.stats = {"answered": 0, "malformed": 0, "limited": 0, "too_small": 0}

    def _admit(self, source: str, now: float) -> bool:
        return self._buckets.admit(source, now)

    def answer(self, data: bytes, source: tuple, now: float) -> bytes | None:
        if not 20 <= len(data) <= MAX_REQUEST:
            self.stats["malformed"] += 1
            return None
        try:
            req = parse(data)
            ip = _norm_ip(source[0])
            port = int(source[1])
        except (BadPacket, ValueError, IndexError, TypeError):
            self.stats["malformed"] += 1
            return None
        if req.method != Method.BINDING or req.cls != Class.REQUEST or req.classic:
            self.stats["malformed"] += 1
            return None
        if not self._admit(ip, now):
            self.stats["limited"] += 1
            return None
        reply = Message(Method.BINDING, Class.SUCCESS, req.transaction_id)
        reply.add(Attr.XOR_MAPPED_ADDRESS, (ip, port))
        reply.add(OBSERVE_TICKET, make_ticket(self.key, (ip, port), now, self.ttl))
        wire = reply.encode()
        if len(wire) > len(data):
            self.stats["too_small"] += 1  # an unpadded request: answering would amplify
            return None
        self.stats["answered"] += 1
        return wire


# --- the client's side ------------------------------------------------------------------------------


def observe_request() -> Message:
    """The punch socket's request: a Binding padded so that the answer is no bigger."""
    return binding_request(extra=[(Attr.PADDING, bytes(REQUEST_PADDING))])


def ticket_of(reply: Message, mapped: Sequence | None) -> tuple[tuple[str, int], bytes] | None:
    """(the address the server saw, its ticket) from an answer, or None when it carries none."""
    ticket = reply.get(OBSERVE_TICKET)
    if type(ticket) is not bytes or len(ticket) != TICKET_BYTES or mapped is None:
        return None
    try:
        return (_norm_ip(mapped[0]), int(mapped[1])), ticket
    except (ValueError, TypeError, IndexError):
        return None


def new_addresses(found: Sequence[tuple[tuple[str, int], bytes] | None], known_ips: Sequence[str],
                  cap: int) -> list[tuple[tuple[str, int], bytes]]:
    """Of observations (address, ticket), one per public IP not in `known_ips`, in order, at most
    `cap`: a pool's addresses, each with the server's ticket for it."""
    seen = set(known_ips)
    out: list[tuple[tuple[str, int], bytes]] = []
    for item in found:
        if item is None or item[0][0] in seen or len(out) >= cap:
            continue
        seen.add(item[0][0])
        out.append(item)
    return out

