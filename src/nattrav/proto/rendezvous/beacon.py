"""The sample beacon: an accepting listener's fresh mapping, seen by the server, without a round trip.

Why: a listener behind an address-and-port-dependent mapping (APDM, "symmetric") must show the
initiator where its NEXT mapping will land, and only a sample taken at the offer shows it (the
ports move with the NAT's other traffic). Sampling through STUN costs the listener a round trip
before its accept can leave. Instead, at the offer it sends one small datagram from its punch
socket to the server's beacon port (a new flow: a new mapping) and its accept at once; the server
reads the datagram's source port as the listener's newest sample and puts it in the session it
starts. When no beacon arrives in time the server asks the listener for STUN samples instead
(``resample``), and the session starts on those, as before.

Hostile peers, and why a one-way datagram is safe here (observe.py's tickets need a round trip):
- The server never answers a beacon: nothing to reflect, nothing to amplify.
- A beacon names an offer and carries a tag, a MAC under a per-offer secret the server minted and
  sent in that offer only, over the listener's enrolled (TLS) connection: nobody else can make a
  beacon that moves the listener's sample. A tag is checked in constant time; the first valid
  beacon of an offer is taken, every later one is refused (a replay moves nothing).
- A forged source address cannot aim anything anywhere: the server takes a beacon only from an IP
  it already observed for that listener (its connection's, or its punch socket's at the
  observation port) and publishes only the PORT as a prediction on that IP. An attacker on the
  path, who could read the tag, could at most move a port prediction of a listener whose packets
  it can already drop.
- The book is bounded (MAX_EXPECTED offers, the oldest go), entries expire with their offer, and
  the datagram is parsed as untrusted bytes: BadBeacon is the only error.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable

from ..report import MAX_SAMPLES, NatReport, Sample
from ..vocab import Allocation
from .observe import _norm_ip

MAGIC = b"NTB1"  # first byte 0x4E: never a STUN message (whose first two bits are 0)
SECRET_BYTES = 16
TAG_BYTES = 16
MAX_OFFER_ID = 64
MAX_BEACON = len(MAGIC) + 1 + MAX_OFFER_ID + TAG_BYTES
MAX_EXPECTED = 4096  # offers a front waits for beacons of (offers per peer and source are capped too)
# node info keys: the initiator's word (it folds a beacon into the listener's report), the
# listener's (when its beacon left, in its samples' time), and the server's (the offer's secret and
# port; the sample it saw). The server strips its own keys from what a peer publishes, and the
# session's hold on the connect (held.py) is the server's word too.
TAKES_BEACON = "takes_beacon"
BEACON_AT = "beacon_at"
SERVER_KEYS = ("beacon_key", "beacon_port", "beacon", "held")


class BadBeacon(ValueError):
    """A datagram that is no beacon, for no offer expected, forged, replayed or from an IP the
    server never saw the listener at (the reason says which)."""


def _tag(secret: bytes, offer_id: str) -> bytes:
    return hmac.new(secret, b"nattrav-beacon-v1|" + offer_id.encode(), hashlib.sha256).digest()[:TAG_BYTES]


def make_beacon(secret: bytes, offer_id: str) -> bytes:
    """The listener's datagram for `offer_id`, under the secret its offer carried."""
    oid = offer_id.encode()
    if not 0 < len(oid) <= MAX_OFFER_ID or len(secret) != SECRET_BYTES:
        raise ValueError("a beacon needs an offer ID of 1..64 bytes and a 16-byte secret")
    return MAGIC + bytes([len(oid)]) + oid + _tag(secret, offer_id)


def is_beacon(data: bytes) -> bool:
    return data[:len(MAGIC)] == MAGIC


def parse_beacon(data: Any) -> tuple[str, bytes]:
    """(offer ID, tag) of a beacon datagram; BadBeacon otherwise."""
    if type(data) is not bytes or not len(MAGIC) + 2 + TAG_BYTES <= len(data) <= MAX_BEACON or not is_beacon(data):
        raise BadBeacon("not a beacon")
    n = data[len(MAGIC)]
    if len(data) != len(MAGIC) + 1 + n + TAG_BYTES:
        raise BadBeacon("a beacon's length does not add up")
    raw = data[len(MAGIC) + 1:len(MAGIC) + 1 + n]
    try:
        offer_id = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadBeacon("an offer ID is ASCII") from None
    return offer_id, data[-TAG_BYTES:]


@dataclass(slots=True)
class Expected:
    """An offer this front delivered, whose listener may send a beacon."""

    offer_id: str
    conn: int
    peer: str
    secret: bytes
    expires: float
    sample: tuple[str, int] | None = None  # the first valid beacon's source
    closed: bool = False  # the server stopped waiting: later beacons move nothing


class BeaconBook:
    """The offers a front waits for beacons of, and the checks a beacon passes (sans-IO)."""

    def __init__(self, max_expected: int = MAX_EXPECTED, stats: dict[str, int] | None = None) -> None:
        """`stats`: the counters go there (the server's, so that its stats line shows them)."""
        self.max_expected = max_expected
        self._expected: OrderedDict[str, Expected] = OrderedDict()
        self.stats = stats if stats is not None else {}
        for name in ("beacons", "beacon_malformed", "beacon_unknown", "beacon_forged", "beacon_wrong_ip",
                     "beacon_replayed"):
            self.stats.setdefault(name, 0)

    def __len__(self) -> int:
        return len(self._expected)

    def expect(self, offer_id: str, conn: int, peer: str, secret: bytes, expires: float, now: float) -> None:
        self._prune(now)
        self._expected.pop(offer_id, None)
        self._expected[offer_id] = Expected(offer_id, conn, peer, secret, expires)
        while len(self._expected) > self.max_expected:
            self._expected.popitem(last=False)

    def get(self, offer_id: str) -> Expected | None:
        return self._expected.get(offer_id)

    def forget(self, offer_id: str) -> None:
        self._expected.pop(offer_id, None)

    def _prune(self, now: float) -> None:
        # entries go in offer order; offers' timeouts differ, so this only trims the expired front
        while self._expected:
            first = next(iter(self._expected.values()))
            if first.expires > now:
                return
            self._expected.popitem(last=False)

    def take(self, data: bytes, source: Any, now: float,
             observed_ips: Callable[[Expected], set[str]]) -> Expected:
        """The offer a valid beacon is for, its sample recorded; BadBeacon otherwise (and counted).
        `observed_ips`: the IPs the server saw the entry's listener at (its connection's and its
        punch socket's): a beacon from anywhere else is refused."""
        try:
            offer_id, tag = parse_beacon(data)
            ip, port = _norm_ip(source[0]), int(source[1])
            if not 0 < port < 65536:
                raise ValueError("port")
        except (BadBeacon, ValueError, TypeError, IndexError):
            self.stats["beacon_malformed"] += 1
            raise BadBeacon("malformed") from None
        entry = self._expected.get(offer_id)
        if entry is None or not now < entry.expires:
            self.stats["beacon_unknown"] += 1
            raise BadBeacon("no such offer waits for a beacon here")
        if not hmac.compare_digest(tag, _tag(entry.secret, offer_id)):
            self.stats["beacon_forged"] += 1
            raise BadBeacon("the tag is not the offer's")
        if entry.sample is not None or entry.closed:
            self.stats["beacon_replayed"] += 1
            raise BadBeacon("the offer's beacon was taken, or no longer waited for")
        if ip not in observed_ips(entry):
            self.stats["beacon_wrong_ip"] += 1
            raise BadBeacon("a beacon from an IP the server never saw the listener at")
        entry.sample = (ip, port)
        self.stats["beacons"] += 1
        return entry


# --- node info: what the offer carries, what the session carries --------------------------------


def offer_beacon(info: Any) -> tuple[bytes, int] | None:
    """(secret, beacon port) from an offer's info, if the server put them there and the initiator
    says it folds beacons into our report (an older initiator would plan on our stale samples)."""
    if not isinstance(info, dict) or info.get(TAKES_BEACON) is not True:
        return None
    key, port = info.get("beacon_key"), info.get("beacon_port")
    if type(key) is not bytes or len(key) != SECRET_BYTES or type(port) is not int or not 0 < port < 65536:
        return None
    return key, port


def session_beacon(info: Any) -> tuple[tuple[str, int], float | None] | None:
    """The server's beacon sample in a peer's session info, with the peer's word on when it left:
    ((ip, port), t) or None."""
    if not isinstance(info, dict):
        return None
    seen = info.get("beacon")
    if not (isinstance(seen, list) and len(seen) == 2 and type(seen[0]) is str and type(seen[1]) is int
            and 0 < seen[1] < 65536):
        return None
    try:
        ip = _norm_ip(seen[0])
    except ValueError:
        return None
    at = info.get(BEACON_AT)
    at = float(at) if type(at) in (int, float) and math.isfinite(at) and at >= 0 else None
    return (ip, seen[1]), at


def fold_sample(report: NatReport, seen: tuple[str, int], at: float | None) -> NatReport:
    """`report` with the beacon's port as its newest sample: what both peers plan on (each folds the
    same server-seen sample into the listener's report, so their plans agree). Only on the IP the
    report's samples show: another IP says nothing about the next port there, and the report is left
    as it was -- unless the report's own flows showed a pool (NatReport.pool) on a sequential NAT:
    its samples and survey already read one port counter across the pool's addresses (the plan for
    it assumes so), and the beacon's flow took the next port of that counter whatever its address.
    The sample's time is the listener's word, kept in order."""
    if report.public is None or not report.samples:
        return report
    try:
        same = _norm_ip(report.public[0]) == seen[0]
    except ValueError:
        return report
    if not same and not (report.pool > 1 and report.allocation is Allocation.SEQUENTIAL):
        return report
    last = report.samples[-1].t
    t = None if last is None else (at if at is not None and at >= last else last)
    samples = (report.samples + (Sample(seen[1], t),))[-MAX_SAMPLES:]
    return replace(report, samples=samples, public=(report.public[0], seen[1]))


def strip_server_keys(info: dict) -> None:
    """A peer's own words under the server's keys would move where (beacon) or how wide (held) its
    peer aims."""
    for key in SERVER_KEYS:
        info.pop(key, None)


def add_to_packed_map(packed: bytes, key: str, value: Any) -> bytes:
    """A msgpack map `packed` (the front packed it: it has no `key`) with one more entry, without
    unpacking it (node info is kept and forwarded packed: wire.Packed)."""
    import msgpack

    head = packed[0]
    if 0x80 <= head <= 0x8E:
        new_head, body = bytes([head + 1]), packed[1:]
    elif head == 0x8F:
        new_head, body = b"\xde" + (16).to_bytes(2, "big"), packed[1:]
    elif head == 0xDE:
        n = int.from_bytes(packed[1:3], "big") + 1
        new_head = (b"\xde" + n.to_bytes(2, "big")) if n < 65536 else (b"\xdf" + n.to_bytes(4, "big"))
        body = packed[3:]
    elif head == 0xDF:
        new_head, body = b"\xdf" + (int.from_bytes(packed[1:5], "big") + 1).to_bytes(4, "big"), packed[5:]
    else:
        raise ValueError("not a packed map")
    return new_head + body + msgpack.packb(key, use_bin_type=True) + msgpack.packb(value, use_bin_type=True)
