"""The one parser of "host:port" as a user types it (command lines, connect("server:7000"), the lab).

    parse_hostport("198.51.100.1", 7000)         -> ("198.51.100.1", 7000)
    parse_hostport("rv.example:80", 7000)        -> ("rv.example", 80)
    parse_hostport("[2001:db8::1]:3478")         -> ("2001:db8::1", 3478)
    parse_hostport("2001:db8::1", 3478)          -> ("2001:db8::1", 3478)   a bare IPv6 address
    parse_hostport("7000", default_host="0.0.0.0") -> ("0.0.0.0", 7000)     a bare port

Mistakes raise UsageError (a ValueError) with one line naming what is wrong; nothing is resolved here.
"""

from __future__ import annotations

import ipaddress
import re

from .errors import UsageError

_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})\Z")


def parse_hostport(text: str, default_port: int | None = None, *, default_host: str | None = None,
                   port_zero: bool = False) -> tuple[str, int]:
    """(host, port) from `text`. A missing port takes `default_port`, a missing host (":7000" or a
    bare "7000") `default_host`; without the default that part is required. Port 0 ("pick a free
    one") only with port_zero. IPv6 addresses with a port are written in brackets."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError("empty address: want HOST[:PORT]")
    text = text.strip()
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise UsageError(f"bad address {text!r}: want [IPV6]:PORT")
        host, port = inside, rest[1:] if rest else None
        _ipv6(host, text)
    elif text.count(":") > 1:
        host, port = text, None  # a bare IPv6 address: no port (it would be ambiguous)
        _ipv6(host, text)
    elif ":" in text:
        host, _, port = text.partition(":")
    elif text.isdigit() and default_host is not None:
        host, port = "", text
    else:
        host, port = text, None
    if not host:
        if default_host is None:
            raise UsageError(f"no host in {text!r}")
        host = default_host
    elif not _NAME.match(host) and not _is_ip(host):
        raise UsageError(f"bad host in {text!r}")
    return host, _port(port, default_port, port_zero, text)


def _port(port: str | None, default: int | None, zero: bool, text: str) -> int:
    lo = 0 if zero else 1
    if port is None or port == "":
        if default is None:
            raise UsageError(f"no port in {text!r}: want HOST:PORT")
        return default
    if not port.isdigit() or not lo <= int(port) <= 65535:
        raise UsageError(f"bad port in {text!r}: want a PORT in {lo}..65535")
    return int(port)


def _ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise UsageError(f"bad IPv6 address in {text!r}") from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


__all__ = ["parse_hostport"]
