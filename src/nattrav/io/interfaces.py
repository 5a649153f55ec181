"""This host's IPv4 interface addresses: the host candidates a report publishes (proto/report.py)."""

from __future__ import annotations

import ipaddress
import socket

import psutil

from ..proto.report import MAX_HOSTS, Endpoint


def interface_addresses() -> list[str]:
    """Every IPv4 address of an interface that is up, loopback excluded."""
    try:
        stats, addrs = psutil.net_if_stats(), psutil.net_if_addrs()
    except OSError:
        return []
    out: list[str] = []
    for name, entries in addrs.items():
        st = stats.get(name)
        if st is not None and not st.isup:
            continue
        for a in entries:
            if a.family != socket.AF_INET:
                continue
            ip = ipaddress.ip_address(a.address)
            if not (ip.is_loopback or ip.is_unspecified or ip.is_multicast) and a.address not in out:
                out.append(a.address)
    return out


def host_candidates(bound: tuple[str, int]) -> tuple[Endpoint, ...]:
    """Where a peer on this network reaches the socket bound to `bound`: its own address, or every
    interface address when it is bound to 0.0.0.0. At most MAX_HOSTS, the not globally routable ones
    first (only those are ever aimed at: proto/planner/lan.py)."""
    ip, port = bound[0], bound[1]
    if ip == "0.0.0.0":
        ips = interface_addresses()
    else:
        a = ipaddress.ip_address(ip)
        ips = [] if a.version != 4 or a.is_loopback or a.is_unspecified else [ip]
    ips.sort(key=lambda x: ipaddress.ip_address(x).is_global)  # stable: the interfaces' order stays
    return tuple((x, port) for x in ips[:MAX_HOSTS])


__all__ = ["host_candidates", "interface_addresses"]
