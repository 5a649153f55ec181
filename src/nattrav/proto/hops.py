"""How far our own NATs reach: the low TTL read off a traceroute to the STUN server, sans-IO.

The low-TTL opening packet must pass every NAT layer of OUR side (each creates its mapping and opens
its filter) and die before the peer's NAT. A packet whose TTL runs out at a forwarding hop is dropped
before that hop's NAT confirms a mapping, so the TTL must count every hop up to and including the
outermost NAT of ours: a guess of 2 dies at the second layer of a home NAT behind a carrier-grade NAT
and opens nothing there.

The hops that answer a TTL-limited probe with ICMP time-exceeded say where they are: an address from
the spaces NATs use on their inside (RFC 1918 private, RFC 6598 shared CGN space, link-local) is a
hop still inside our NATs; the first hop with any other address is outside, past our outermost NAT.
A probe with that TTL leaves every NAT of ours and expires at the first router beyond, before any
peer's NAT. Routers that stay silent leave gaps; the rule then counts from the last inside hop seen.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

# where the inside of a NAT lives: documentation ranges (the lab's "Internet") count as outside
INSIDE_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598: between a home NAT and a carrier-grade NAT
    "169.254.0.0/16", "127.0.0.0/8",
    "fc00::/7", "fe80::/10", "::1/128",
))
SHARED_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598: used only inside carrier-grade NATs
DEFAULT_LOW_TTL = 2  # when the trace cannot tell: one NAT, one router to the peer's NAT


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr


def inside(ip: str) -> bool:
    """Whether `ip` belongs to the address space found on the inside of NATs."""
    addr = _address(ip)
    return any(addr in net for net in INSIDE_NETS if net.version == addr.version)


def shared(ip: str) -> bool:
    """Whether `ip` is in the RFC 6598 shared address space: a carrier-grade NAT's inside. False for
    anything that is not an IP address."""
    try:
        return _address(ip) in SHARED_SPACE
    except ValueError:
        return False


@dataclass(frozen=True)
class HopReading:
    """What a trace says about our side of the path."""

    low_ttl: int  # the TTL that leaves all our NATs and expires at the first hop beyond them
    measured: bool  # False: the trace showed no usable hop; low_ttl is the default
    inside_hops: int  # hops seen inside NAT address space (our NAT layers and routers between them)
    server_ttl: int | None  # the smallest TTL that reached the server (the path length), if any
    hops: tuple[tuple[int, str | None], ...]  # (ttl, address that answered or None), in TTL order

    @property
    def cgn(self) -> bool:
        """A hop answered from the shared address space: a carrier-grade NAT is one of our layers
        (its per-subscriber flow cap is small: proto/planner/budget.py)."""
        return any(ip is not None and shared(ip) for _, ip in self.hops)

    def describe(self) -> str:
        if not self.measured:
            return f"no hop answered; low TTL {self.low_ttl} (default)"
        shown = ", ".join(f"{t}:{ip or '*'}" for t, ip in self.hops)
        return f"low TTL {self.low_ttl} ({self.inside_hops} hop(s) inside our NATs; trace {shown})"

    def to_dict(self) -> dict:
        return {"low_ttl": self.low_ttl, "measured": self.measured, "inside_hops": self.inside_hops,
                "cgn": self.cgn, "server_ttl": self.server_ttl, "hops": [list(h) for h in self.hops]}


def read_trace(answers: Mapping[int, str], server_ttl: int | None, max_ttl: int) -> HopReading:
    """answers: TTL -> address of the hop that said time-exceeded; server_ttl: the smallest TTL whose
    probe the server answered. Pure; never raises for odd inputs (a hop's address may be anything)."""
    hops = tuple((t, answers.get(t)) for t in range(1, max_ttl + 1)
                 if server_ttl is None or t < server_ttl)
    inside_ttls, outside_ttls = [], []
    for t, ip in hops:
        if ip is None:
            continue
        try:
            (inside_ttls if inside(ip) else outside_ttls).append(t)
        except ValueError:
            continue
    last_inside = max(inside_ttls, default=0)
    beyond = [t for t in outside_ttls if t > last_inside]
    if beyond:
        low = min(beyond)
    elif inside_ttls:
        low = last_inside + 1
    else:
        return HopReading(DEFAULT_LOW_TTL, False, 0, server_ttl, hops)
    if server_ttl is not None:
        low = min(low, max(1, server_ttl - 1))  # never as far as the server itself
    return HopReading(low, True, len(inside_ttls), server_ttl, hops)


def filled(now: HopReading, before: HopReading, max_ttl: int) -> HopReading:
    """`now` read again with the hops that answered in `before` and are silent in `now`: for two
    traces of the same path (the caller checks that: the same server TTL), where a hop that answered
    before and is silent now is still there, its ICMP rate-limited (back-to-back connects' low-TTL
    packets spend the same routers' budget). A trace that lost our CGN's hop reads the opening TTL one
    short, and the punch waits ~0.4 s for its escalation."""
    answers = {t: ip for t, ip in before.hops if ip is not None}
    answers.update((t, ip) for t, ip in now.hops if ip is not None)
    return read_trace(answers, now.server_ttl, max_ttl)


DEFAULT_HOPS = HopReading(DEFAULT_LOW_TTL, False, 0, None, ())

__all__ = ["DEFAULT_HOPS", "DEFAULT_LOW_TTL", "HopReading", "INSIDE_NETS", "SHARED_SPACE", "filled", "inside",
           "read_trace", "shared"]
