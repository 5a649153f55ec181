"""Host (LAN) candidates, sans-IO: when two peers may aim at each other's own interface addresses.

Two hosts behind one NAT often cannot meet through it (a NAT that does not hairpin drops a packet
from inside to its own public address), yet reach each other directly on their network. ICE (RFC
8445) and Tailscale try the host candidates beside the server-reflexive ones; so do both planners
here, racing the planned strategy (udp.py, tcp.py).

The safety rule (docs/security.md): packets go to the address the rendezvous server observed for
the peer, and to the peer's own LAN addresses only inside the same network. Both peers must reach
the same decision from the same data, so the rule reads only what both of them hold: the two
addresses the rendezvous server observed (each side learns its own when it enrols, the peer's in
the session) and the two published candidate lists.

  Same network: the rendezvous server saw both peers at one IP address, and that address is not a
  loopback one (then the server and both peers share one host, and the observed address already
  reaches the peer). One public address for both means one NAT in front of both (a home or office
  router, or one carrier-grade NAT address two subscribers share).
  LAN attempts: only when the two are in the same network and each published a candidate the other
  may aim at: one that is not globally routable (RFC 1918, 100.64/10, link-local, the documentation
  ranges) and is not the observed address itself. Each side aims at every such candidate of the
  peer: LAN_ROUNDS authenticated HELLOs (UDP) or LAN_CONNECTS connect()s (TCP) each, from the start.

Equality and "not global" are symmetric facts, so both sides decide alike. A peer that shares our
public address could still name hosts of our own network as its candidates; what it gets is a
handful of authenticated packets per candidate (at most MAX_HOSTS of them) per accepted session.
Two hosts in different homes behind one CGN address may share a private range, so a few HELLOs can
reach a stranger's host in our own network: ICE sends the same checks. Peers behind a NAT with a pool
of public addresses (one per inside host) are not "same network" by this rule.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from ..report import Endpoint

LAN_INTERVAL = 0.2  # seconds between a UDP candidate's HELLOs
LAN_ROUNDS = 5  # HELLOs per UDP candidate: a lost one is resent, a dead candidate costs five packets
LAN_CONNECTS = 3  # connect()s per TCP candidate, LAN_INTERVAL apart after a refusal
# the UDP planned attempts' later start beside LAN attempts (RFC 8445's pacing, Ta): a LAN answers
# well within it, so both sides pick the LAN path where it works
LAN_HEAD_START = 0.05


def same_network(own_ip: str | None, peer_ip: str | None) -> bool:
    """Whether the rendezvous server saw both peers at one (non-loopback) IP address."""
    if own_ip is None or peer_ip is None:
        return False
    try:
        own, peer = ipaddress.ip_address(own_ip), ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    return own == peer and not own.is_loopback


def aimable(ip: str, peer_ip: str) -> bool:
    """A candidate we may send to inside the same network: not globally routable, not the observed
    address (the planned strategies aim there already)."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return (a.version == 4 and not a.is_global and not a.is_loopback and not a.is_multicast
            and not a.is_unspecified and a != ipaddress.ip_address(peer_ip))


def lan_targets(own_ip: str | None, own_hosts: Sequence[Endpoint], peer_ip: str | None,
                peer_hosts: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
    """The peer's candidates this side aims at (in the peer's order), or () when the rule says no.
    Called with the two sides swapped, it gives what the peer aims at; one is empty only when the
    other is, so both sides try the LAN or neither does (a TCP side must know whether to accept)."""
    if not same_network(own_ip, peer_ip):
        return ()
    assert own_ip is not None and peer_ip is not None
    ours = tuple((ip, port) for ip, port in peer_hosts if aimable(ip, peer_ip))
    theirs = [h for h in own_hosts if aimable(h[0], own_ip)]
    return ours if theirs else ()


__all__ = ["LAN_CONNECTS", "LAN_HEAD_START", "LAN_INTERVAL", "LAN_ROUNDS", "aimable", "lan_targets", "same_network"]
