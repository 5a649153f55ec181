"""The rendezvous observation port (proto/rendezvous/observe.py): the UDP responder, and the check
of a ticket a peer hands back.

Input: byte 0 picks the mode (bit 0: responder / ticket check), the rest is the datagram, or the
ticket (24 bytes) then an [ip, port] made of the remaining bytes.

Contract: the responder never raises and never answers with more bytes than it got; check_ticket
raises BadTicket and only that, and vouches only for the address its key signed.
"""

from __future__ import annotations

from nattrav.proto.rendezvous.observe import (TICKET_BYTES, BadTicket, ObserveResponder, check_ticket,
                                              make_ticket, observe_request)

from fuzz_harness import Target, Violation, timed

KEY = bytes(range(32))
SIGNED = ("198.51.100.7", 4000)
RESPONDER = ObserveResponder(KEY, rate=1e9, burst=1e9)


def run(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    if data[0] & 1 == 0:
        with timed():
            reply = RESPONDER.answer(body, SIGNED, 1.0)
        if reply is not None and len(reply) > len(body):
            raise Violation(f"answered {len(body)} bytes with {len(reply)}")
        return
    ticket, rest = body[:TICKET_BYTES], body[TICKET_BYTES:]
    text = rest[:-2].decode("latin-1")
    addr = [text, int.from_bytes(rest[-2:], "big")] if len(rest) >= 2 else rest
    with timed():
        got = check_ticket(KEY, addr, ticket, 1.0)
    if got != SIGNED:
        raise Violation(f"a ticket vouched for {got}, which the key never signed")


def seeds() -> dict[str, bytes]:
    good = make_ticket(KEY, SIGNED, 0.0)
    return {
        "request": b"\0" + observe_request().encode(),
        "ticket-good": b"\1" + good + SIGNED[0].encode() + SIGNED[1].to_bytes(2, "big"),
        "ticket-other-address": b"\1" + good + b"192.0.2.1" + SIGNED[1].to_bytes(2, "big"),
    }


TARGET = Target("rv_observe", run, (BadTicket,), seeds, max_len=700,
                what="rendezvous observation port: the UDP responder and ticket checks")
