"""The ladder's last rung: the relay (issue 16), as WebRTC falls back to TURN and Tailscale to DERP.

One allocation serves a session: the side that asks for the peer (connect()) allocates on the relay
the rendezvous server granted it, before it asks, and publishes the relayed address in its node info
next to its NAT report. The listener needs no allocation: it sends from its punch socket to that
address, which it accepts only at the relay its own grant names (so no peer can aim our packets at a
third party through a made-up "relay").

Both sides decide alike from what both hold: a pair the planner calls infeasible goes straight to the
relay; a feasible pair whose punch fails goes there when the punch gives up (both give up at the
same time: same plan, same start). No relay offered (a server without --turn, a failed allocation):
the ladder ends at the punch as before. The relayed path keeps probing the peer's public endpoint and
moves there in place when it answers (io/relay_path.py).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ..errors import RelayError
from ..io.session import Session
from ..proto.report import NatReport
from ..proto.stun_attrs import Address
from ..proto.turn_rest import RelayGrant
from .endpoint import EventHook, peer_udp_ips

if TYPE_CHECKING:
    from ..io.relay_path import RelayedPath
    from ..io.relay_stream import RelayedTcp
    from ..io.turn import TurnLink, TurnTcpLink

# the relayed paths and TURN are imported when a rung is used: most sessions never reach the relay,
# and a cold start need not pay for them (issue 13)

INFO_KEY = "relay"  # node info: [ip, port] of the asking side's relayed address
RELAY_WAIT = 10.0  # seconds the relayed handshake may take (the relay is one RTT away)


@dataclass
class RelayRung:
    """What one side brings to the relay rung: the allocation (the asking side) or the peer's
    relayed address (the listener)."""

    link: TurnLink | TurnTcpLink | None = None
    peer_relayed: Address | None = None

    def _announce(self, why: str, reason: str, emit: EventHook) -> None:
        where = self.link.relayed if self.link is not None else self.peer_relayed
        assert where is not None
        emit("relay", {"why": why, "reason": reason, "relay": list(where), "allocating": self.link is not None})

    def path(self, sock: Any, session: Session, peer_ip: str, peer_report: NatReport, *, why: str,
             reason: str, emit: EventHook) -> RelayedPath:
        """The relayed path on our punch socket (it owns the socket, and the allocation, from now on).
        `why`: "infeasible" or "punch-failed"; `reason`: the planner's or the punch's words."""
        from ..io.relay_path import RelayedPath
        from ..io.turn import TurnTcpLink

        assert not isinstance(self.link, TurnTcpLink)
        self._announce(why, reason, emit)
        direct = [(peer_ip, peer_report.public[1])] if peer_report.public is not None else []
        # the permission names every address the server saw the peer on, never one it only reports
        rung = RelayedPath(sock, session.key, session.role, os.urandom(8), peer_ip=peer_ip, direct=direct,
                           link=self.link, relayed=self.peer_relayed, emit=emit, reason=reason,
                           peer_ips=peer_udp_ips(session))
        self.link = None  # the path releases it
        return rung

    def stream(self, session: Session, peer_ip: str, *, why: str, reason: str, emit: EventHook) -> RelayedTcp:
        """The relayed TCP stream (RFC 6062) to open; it owns the allocation from now on."""
        from ..io.relay_stream import RelayedTcp
        from ..io.turn import TurnTcpLink

        assert self.link is None or isinstance(self.link, TurnTcpLink)
        self._announce(why, reason, emit)
        rung = RelayedTcp(session.key, session.role, peer_ip=peer_ip, link=self.link, relayed=self.peer_relayed,
                          emit=emit)
        self.link = None
        return rung

    async def aclose(self) -> None:
        """Give an allocation that was not used back."""
        if self.link is not None:
            link, self.link = self.link, None
            with trio.CancelScope(shield=True):
                await link.aclose()


async def allocate(grant: RelayGrant | None, problem: str | None, src_ip: str | None,
                   emit: EventHook, *, tcp: bool = False) -> RelayRung | None:
    """(the asking side) an allocation on the granted relay -- a TCP one (RFC 6062) for the TCP
    transport --, or None (and why, as an event)."""
    if grant is None:
        if problem:
            emit("relay-note", {"note": problem})
        return None
    from ..io.turn import allocate_tcp, allocate_udp

    try:
        link: TurnLink | TurnTcpLink = (await allocate_tcp(grant) if tcp
                                        else await allocate_udp(grant, local_ip=src_ip))
    except RelayError as exc:
        emit("relay-note", {"note": f"no relay for this session: {exc}"})
        return None
    emit("relay-ready", {"relayed": list(link.relayed), "server": list(link.server)})
    return RelayRung(link=link)


def info(rung: RelayRung | None) -> dict[str, Any]:
    """Node info to publish with the report: where the peer reaches our allocation."""
    if rung is None or rung.link is None:
        return {}
    ip, port = rung.link.relayed
    return {INFO_KEY: [ip, port]}


async def peer_rung(session: Session, grant: RelayGrant | None, emit: EventHook) -> RelayRung | None:
    """(the listener) the asking peer's relayed address, when it offered one at the relay our own
    grant names; None otherwise, and then this side never relays (the asking side, if it had an
    allocation, waits for us there in vain and says so after RELAY_WAIT)."""
    raw = session.peer_info.get(INFO_KEY) if isinstance(session.peer_info, dict) else None
    if raw is None:
        return None
    if grant is None:
        emit("relay-note", {"note": "the peer offers a relay, but our server granted us none"})
        return None
    try:
        ip = str(ipaddress.IPv4Address(raw[0]))
        port = raw[1]
        if type(port) is not int or not 0 < port < 65536 or len(raw) != 2:
            raise ValueError
    except (TypeError, ValueError, IndexError, KeyError, ipaddress.AddressValueError):
        emit("relay-note", {"note": f"the peer's relay address is malformed: {str(raw)[:80]}"})
        return None
    try:
        relay_ips = {a[4][0] for a in await trio.socket.getaddrinfo(grant.host, grant.port, trio.socket.AF_INET)}
    except OSError as exc:
        emit("relay-note", {"note": f"cannot resolve our relay {grant.host}: {exc}"})
        return None
    if ip not in relay_ips:
        emit("relay-note", {"note": f"the peer's relay address {ip} is not at our relay {grant.host}: not used"})
        return None
    return RelayRung(peer_relayed=(ip, port))


__all__ = ["INFO_KEY", "RELAY_WAIT", "RelayRung", "allocate", "info", "peer_rung"]
