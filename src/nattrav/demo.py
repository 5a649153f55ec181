"""The main job: the most complete end-to-end run nattrav has so far.

Now: the C core opens a pool of sockets, sets a low TTL on them and reports the bound ports and the
time it took. The lab demo (two peers behind symmetric NATs) replaces this when the lab and the
rendezvous server land.
"""

from __future__ import annotations

import sys
import time

from .core import SocketPool


def main(argv: list[str] | None = None) -> int:
    count = 1024
    t0 = time.perf_counter()
    with SocketPool(count, "127.0.0.1", ttl=2) as pool:
        elapsed = time.perf_counter() - t0
        ports = pool.ports
    print(f"C core: opened, bound and set TTL=2 on {count} UDP sockets in {elapsed * 1e3:.1f} ms")
    print(f"  ports {min(ports)}..{max(ports)}, all distinct: {len(set(ports)) == count}")
    print("The NAT lab demo (peers behind symmetric NATs) is not built yet; this is the C core only.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
