"""Background traffic: a host behind a NAT that opens new flows at a steady rate.

Each packet goes to a destination (address, port) not used before, so every packet is a new flow and
costs the NAT one mapping (one port on a sequential NAT, also on an address-dependent one since the
address changes too). The router blackholes the destination range: the noise goes nowhere.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import time

from .topology import SINK_NET


def destinations(net: str = SINK_NET):
    hosts = list(ipaddress.ip_network(net).hosts())
    port = 1024
    while True:
        for h in hosts:
            yield str(h), port
        port = port + 1 if port < 65535 else 1024


def run(rate: float, duration: float | None = None) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    gap = 1.0 / rate
    start = time.monotonic()
    sent = 0
    for dst in destinations():
        now = time.monotonic()
        if duration is not None and now - start >= duration:
            break
        due = start + sent * gap
        if due > now:
            time.sleep(due - now)
        try:
            sock.sendto(b"noise", dst)
        except (BlockingIOError, OSError):
            pass
        sent += 1
    return sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="open new flows through the NAT at a steady rate")
    ap.add_argument("--rate", type=float, required=True, help="new flows (ports) per second")
    ap.add_argument("--duration", type=float, default=None, help="seconds; default: until killed")
    a = ap.parse_args(argv)
    if a.rate <= 0:
        return 0
    run(a.rate, a.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
