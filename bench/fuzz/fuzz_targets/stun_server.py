"""The STUN server's per-request decision, without sockets: StunServer.handle (parse + decide +
carry out) over the UDP path, StunTcpServer.answer over the TCP path, StunServer.handle_control for
the two-host control link, in every layout. The sockets are stand-ins that record what is sent.

Contract: none of these raises (the server counts a malformed request and drops it). Every reply
goes to the IP the request came from (RESPONSE-PORT may pick the port, never the address), leaves
from one of the server's own sockets, and is a well-formed STUN message with the request's ID; a
request handed to the peer goes to the peer's control port as a frame the peer can decode.
"""

from __future__ import annotations

from nattrav.errors import BadPacket
from nattrav.io.stun_server import StunServer
from nattrav.io.stun_tcp import StunTcpServer
from nattrav.proto import stun
from nattrav.proto.stun_attrs import Attr, ChangeRequest, Class, Method
from nattrav.proto.stun_control import ControlReceiver, ControlSender, _mac, control_key
from nattrav.proto.stun_server import StunServerConfig

from fuzz_harness import Target, Violation, timed
from fuzz_targets.stun_codec import TXN, seeds as codec_seeds

SECRET = b"fuzz-control-secret-0123"
NOW = 1.7e9  # the servers' wall clock: control frames and cookies are checked against it
CONFIGS = (
    StunServerConfig(ip="192.0.2.1", port=3478, alt_port=3479),
    StunServerConfig(ip="192.0.2.1", alt_ip="192.0.2.2", port=3478, alt_port=3479),
    StunServerConfig(ip="192.0.2.1", alt_ip="192.0.2.2", port=3478, alt_port=3479, peer=True, secret=SECRET),
    StunServerConfig(ip="2001:db8::1", alt_ip="2001:db8::2", port=3478, alt_port=0),
    StunServerConfig(ip="192.0.2.1", port=3478, alt_port=0, software=None),
)
SOURCES = (
    ("203.0.113.10", 40000), ("198.51.100.7", 1), ("2001:db8:1::7", 65535), ("203.0.113.10", 3478),
    ("10.0.0.1", 53), ("192.0.2.2", 3480), ("::ffff:203.0.113.9", 9), ("203.0.113.250", 65535),
)


class FakeSock:
    def __init__(self, at: tuple[str, int]) -> None:
        self.at = at
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, dest: tuple[str, int]) -> int:
        self.sent.append((bytes(data), dest))
        return len(data)


def _server(cfg: StunServerConfig) -> StunServer:
    srv = StunServer(cfg)
    srv.wall_clock = lambda: NOW
    for ip in cfg.local_ips:
        for port in cfg.ports:
            srv._socks[(ip, port)] = FakeSock((ip, port))
            srv.addresses.append((ip, port))
    if cfg.peer:
        srv._control = FakeSock((cfg.ip, cfg.control_port))
        srv._control_tx = ControlSender(cfg.secret, cfg.alt_ip, start=NOW)
        srv._control_rx = ControlReceiver(cfg.secret, cfg.ip)
    return srv


def _check_reply(reply: bytes, request: bytes) -> None:
    try:
        msg = stun.parse(reply)
    except BadPacket as exc:
        raise Violation(f"the server sent a malformed STUN message: {exc}") from None
    req = stun.parse(request)
    if msg.transaction_id != req.transaction_id or msg.cls not in (Class.SUCCESS, Class.ERROR):
        raise Violation("a reply that is not a response to the request")


def _check_sends(srv: StunServer, request: bytes, client: tuple[str, int], *, forwarded: bool) -> None:
    cfg = srv.config
    for at, sock in srv._socks.items():
        for data, dest in sock.sent:
            if dest[0] != client[0]:
                raise Violation(f"reply from {at} aimed at {dest}, the request came from {client}")
            _check_reply(data, request)
    if srv._control is not None:
        for frame, dest in srv._control.sent:
            if forwarded:
                raise Violation("a forwarded request was forwarded again")
            if dest != (cfg.alt_ip, cfg.control_port):
                raise Violation(f"control frame aimed at {dest}, not the peer")
            try:  # the peer's view: addressed to it, fresh, authentic
                ControlReceiver(cfg.secret, cfg.alt_ip).accept(frame, NOW)
            except BadPacket as exc:
                raise Violation(f"the peer cannot decode our control frame: {exc}") from None


def run(data: bytes) -> None:
    if len(data) < 2:
        return
    a, b, body = data[0], data[1], data[2:]
    cfg = CONFIGS[a % len(CONFIGS)]
    mode = (a >> 3) & 3
    src = SOURCES[a >> 5]
    addresses = [(ip, port) for ip in cfg.local_ips for port in cfg.ports]
    recv_at = addresses[b % len(addresses)]
    if mode in (0, 1):
        srv = _server(cfg)
        with timed():
            srv.handle(body, src, recv_at)
        _check_sends(srv, body, src, forwarded=False)
    elif mode == 2:
        with timed():
            out = StunTcpServer(cfg).answer(body, src, recv_at)
        if out is not None:
            _check_reply(out, body)
    else:
        srv = _server(cfg)
        frame = body
        if b & 0x10 and cfg.secret:  # a frame from a peer that holds the secret
            frame = body + _mac(control_key(cfg.secret), body)
        peer = (cfg.alt_ip or "192.0.2.2", cfg.control_port) if not b & 0x20 else src
        with timed():
            srv.handle_control(frame, peer)
        if srv.stats.get("forwarded_in"):
            fwd = ControlReceiver(cfg.secret, cfg.ip).accept(frame, NOW)
            _check_sends(srv, fwd.request, fwd.src, forwarded=True)


def seeds() -> dict[str, bytes]:
    reqs = {k: v for k, v in codec_seeds().items() if stun.parse(v).cls == Class.REQUEST}
    reqs["change-ip"] = stun.binding_request(change_ip=True, transaction_id=TXN).encode()
    reqs["change-both-padding"] = stun.binding_request(
        change_ip=True, change_port=True, transaction_id=TXN,
        extra=[(Attr.PADDING, b"\0" * 64)]).encode(fingerprint=True)
    reqs["response-port"] = stun.binding_request(response_port=5000, transaction_id=TXN).encode()
    reqs["classic-change"] = stun.binding_request(change_ip=True, change_port=True, classic=True,
                                                  transaction_id=bytes(range(16))).encode()
    ind = stun.Message(Method.BINDING, Class.INDICATION, TXN).encode()
    other = stun.Message(0x003, Class.REQUEST, TXN).add(Attr.CHANGE_REQUEST, ChangeRequest(True, True))
    reqs["indication"], reqs["method-3"] = ind, other.encode()
    # issue 14 finding 4: distinct unknown comprehension-required attributes, deduplicated in O(k^2)
    many = stun.Message(Method.BINDING, Class.REQUEST, TXN)
    for i in range(500):
        many.add(0x4000 + i, b"")
    reqs["many-unknown-attributes"] = many.encode()
    out = {}
    for i, (name, req) in enumerate(sorted(reqs.items())):
        cfg_i = i % len(CONFIGS)
        out[f"udp-{name}"] = bytes([cfg_i | (i % 8) << 5, i]) + req
        out[f"tcp-{name}"] = bytes([cfg_i | 2 << 3, i]) + req
    fwd = ControlSender(SECRET, "192.0.2.1", start=NOW).forward(
        3478, ("192.0.2.2", 3478), ("203.0.113.10", 40000), reqs["change-ip"], NOW)
    out["control-signed"] = bytes([2 | 3 << 3, 0x10]) + fwd[:-16]  # the harness signs it
    out["control-whole"] = bytes([2 | 3 << 3, 0]) + fwd
    out["control-stranger"] = bytes([2 | 3 << 3, 0x20]) + fwd
    return out


TARGET = Target("stun_server", run, (), seeds, max_len=2048,
                what="StunServer.handle / handle_control, StunTcpServer.answer (parse + decide), fake sockets")
