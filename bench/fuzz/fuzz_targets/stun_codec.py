"""STUN codec (proto/stun.py) and the client's reading of replies (proto/stun_client.Transaction).

Contract: parse() raises BadPacket and only that. Beyond it: whatever parse() accepts encodes again
and parses back to the same message (a value the parser lets in is one the codec can represent),
the integrity and fingerprint checks of a parsed message never raise, and a client transaction
handed any datagram either takes it as its reply or discards it, never raising.
"""

from __future__ import annotations

from nattrav.errors import BadPacket, LocalProtocolError
from nattrav.proto import stun
from nattrav.proto.stun import Message
from nattrav.proto.stun_attrs import Attr, ChangeRequest, Class, ErrorCode, Method
from nattrav.proto.stun_client import Transaction

from fuzz_harness import Target, Violation, timed

KEY = b"VOkJxbRl1RmTxUk/WvJxBt"  # RFC 5769's password: its vectors' MESSAGE-INTEGRITY verifies
TXN = bytes.fromhex("b7e7a701bc34d686fa87dfae")  # RFC 5769's transaction ID
CLASSIC_TXN = bytes(range(16))
SERVER = ("192.0.2.1", 3478)

# RFC 5769 §2.1-2.4 and RFC 8489 Appendix B.1, as in tests/proto/test_stun.py
RFC_VECTORS = {
    "rfc5769-request": "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
    "002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf",
    "rfc5769-ipv4-response": "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220"
    "002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96",
    "rfc5769-ipv6-response": "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c",
    "rfc5769-long-term": "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b90000"
    "0015001c662f2f3439396b39353464364f4c33346f4c39465354767936347341"
    "0014000b6578616d706c652e6f72670000080014f67024656dd64a3e02b8e0712e85c9a28ca89666",
    "rfc8489-sha256": "000100902112a44278ad3433c6ad72c029da412e"
    "001e00204a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
    "001500296f624d61744a6f733241414143662f2f3439396b39353464364f4c33346f4c394653547679363473410000"
    "000014000b6578616d706c652e6f726700001d000400020000"
    "001c0020b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278cc6518e65",
}


def _transactions() -> tuple[Transaction, Transaction]:
    modern = Transaction(stun.binding_request(transaction_id=TXN), SERVER)
    classic = Transaction(stun.binding_request(classic=True, transaction_id=CLASSIC_TXN), SERVER)
    return modern, classic


def run(data: bytes) -> None:
    with timed():
        stun.is_stun(data)
    # the client side first: it must discard anything that is not its reply, quietly
    for tx in _transactions():
        tx.start(0.0)
        with timed():
            tx.receive(data, SERVER, 0.01)
    with timed():
        msg = stun.parse(data)
        msg.unknown_required()
        _ = msg.mapped_address
        msg.check_fingerprint()
        msg.check_integrity(KEY)
        msg.check_integrity_sha256(KEY)
    try:
        again = stun.parse(msg.encode())
    except (LocalProtocolError, BadPacket) as exc:
        raise Violation(f"a parsed message does not encode and parse back: {exc}") from None
    if (again.method, again.cls, again.transaction_id, again.attributes) != (
            msg.method, msg.cls, msg.transaction_id, msg.attributes):
        raise Violation("a parsed message changed on its way through encode() and parse()")


def seeds() -> dict[str, bytes]:
    out = {k: bytes.fromhex(v) for k, v in RFC_VECTORS.items()}
    out["classic-change-both"] = bytes.fromhex("00010008") + b"\x11" * 16 + bytes.fromhex("0003000400000006")
    out["bare-binding"] = stun.binding_request(transaction_id=TXN).encode()
    out["binding-fingerprint"] = stun.binding_request(transaction_id=TXN).encode(fingerprint=True)
    out["binding-change-port-response-port"] = stun.binding_request(
        change_port=True, response_port=40000, transaction_id=TXN,
        extra=[(Attr.PADDING, b"\0" * 32), (Attr.SOFTWARE, "fuzz")]).encode(integrity_key=KEY, fingerprint=True)
    ok = Message(Method.BINDING, Class.SUCCESS, TXN)
    ok.add(Attr.XOR_MAPPED_ADDRESS, ("203.0.113.10", 40000)).add(Attr.RESPONSE_ORIGIN, SERVER)
    ok.add(Attr.OTHER_ADDRESS, ("192.0.2.2", 3479)).add(Attr.SOFTWARE, "nattrav")
    out["success-v4"] = ok.encode(fingerprint=True)
    ok6 = Message(Method.BINDING, Class.SUCCESS, TXN)
    ok6.add(Attr.XOR_MAPPED_ADDRESS, ("2001:db8::10", 40000)).add(Attr.MAPPED_ADDRESS, ("2001:db8::10", 40000))
    ok6.add(Attr.XOR_MAPPED_ADDRESS_OLD, ("203.0.113.10", 1))
    out["success-v6"] = ok6.encode(integrity_sha256_key=KEY)
    classic = Message(Method.BINDING, Class.SUCCESS, CLASSIC_TXN)
    classic.add(Attr.MAPPED_ADDRESS, ("203.0.113.10", 40000)).add(Attr.SOURCE_ADDRESS, SERVER)
    classic.add(Attr.CHANGED_ADDRESS, ("192.0.2.2", 3479)).add(Attr.REFLECTED_FROM, ("10.0.0.1", 1))
    out["classic-success"] = classic.encode()
    err = Message(Method.BINDING, Class.ERROR, TXN)
    err.add(Attr.ERROR_CODE, ErrorCode(420, "Unknown Attribute")).add(Attr.UNKNOWN_ATTRIBUTES, (0x0024, 0x7FFF))
    err.add(Attr.ALTERNATE_SERVER, ("192.0.2.9", 3478)).add(Attr.REALM, "example.org").add(Attr.NONCE, "n")
    out["error-420"] = err.encode(fingerprint=True)
    req = Message(Method.BINDING, Class.REQUEST, TXN)
    req.add(Attr.CHANGE_REQUEST, ChangeRequest(True, False)).add(Attr.USERNAME, "u").add(0x7001, b"x" * 5)
    req.add(Attr.PASSWORD, b"pw").add(Attr.RESPONSE_ADDRESS, ("198.51.100.1", 9))
    out["request-unknown-required"] = req.encode()
    return out


TARGET = Target("stun_codec", run, (BadPacket,), seeds, max_len=2048,
                what="STUN parse/encode round trip, integrity checks, client Transaction.receive")
