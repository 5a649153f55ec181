"""The rendezvous beacon port (proto/rendezvous/beacon.py): a datagram that may be a listener's
sample beacon, checked against a book that expects one offer.

Input: byte 0 picks the source (bit 0: an IP the server observed for the listener, or another),
bytes 1-2 its port, the rest is the datagram.

Contract: BeaconBook.take raises BadBeacon and only that; it takes a beacon only from the observed
IP, only under the offer's secret, and only once (later ones move nothing).
"""

from __future__ import annotations

from nattrav.proto.rendezvous.beacon import BadBeacon, BeaconBook, make_beacon

from fuzz_harness import Target, Violation, timed

SECRET = bytes(range(16))
OFFER = "offer-fuzz"
OBSERVED = "198.51.100.7"


def run(data: bytes) -> None:
    if len(data) < 3:
        return
    ip = OBSERVED if data[0] & 1 == 0 else "192.0.2.9"
    port = int.from_bytes(data[1:3], "big")
    book = BeaconBook()
    book.expect(OFFER, 1, "bob", SECRET, 100.0, 0.0)
    with timed():
        entry = book.take(data[3:], (ip, port), 1.0, lambda e: {OBSERVED})
    if ip != OBSERVED or data[3:] != make_beacon(SECRET, OFFER):
        raise Violation(f"took a beacon from {ip} that is not the offer's: {data[3:].hex()}")
    if entry.sample != (OBSERVED, port):
        raise Violation(f"recorded {entry.sample} for a beacon from {(ip, port)}")
    try:
        book.take(data[3:], (ip, port ^ 1), 1.0, lambda e: {OBSERVED})
    except BadBeacon:
        return
    raise Violation("a replayed beacon was taken")


def seeds() -> dict[str, bytes]:
    good = make_beacon(SECRET, OFFER)
    return {
        "beacon-good": b"\0\x9c\x40" + good,
        "beacon-other-ip": b"\1\x9c\x40" + good,
        "beacon-other-secret": b"\0\x9c\x40" + make_beacon(bytes(16), OFFER),
        "beacon-other-offer": b"\0\x9c\x40" + make_beacon(SECRET, "offer-other"),
    }


TARGET = Target("rv_beacon", run, (BadBeacon,), seeds, max_len=200,
                what="rendezvous beacon port: a listener's sample beacon against the offer book")
