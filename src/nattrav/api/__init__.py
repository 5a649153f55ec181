"""The embeddable puncher: `connect()` to a peer by ID, or `listen()` for peers, through our servers.

Both run the same phases, reported through an optional `on_event(phase, detail)` callback:
  discovery  -- the NAT's behaviour (RFC 5780 tests) against our STUN server;
  mapping    -- the punch socket asks S1 and then S2 what public port it has (the paper's phase 1-2);
  rendezvous -- node info (with our signed half of the punch key) goes to the rendezvous server, the
                peer's comes back; the punch key is the two halves' (proto/handshake_kx.py);
  plan       -- the cheapest strategy for this pair of NATs, with its odds (phase 3);
  punch      -- low-TTL opening packets, bursts, and the authenticated handshake (phase 4);
  lifetime   -- (once connected, in the background) how long our NAT keeps an idle mapping.

The punch socket is opened once and kept: its mapping is what the peer aims at, and a new socket
would get a new mapping (the reason a tool that closes its STUN socket before punching fails).
"""

from .endpoint import EventHook, discover_behavior
from .session import AcceptPolicy, Listener, SessionOptions, TcpListener, connect, connect_tcp, listen, listen_tcp
from .udp import Endpoint, open_endpoint, refresh_mappings

__all__ = [
    "AcceptPolicy", "Endpoint", "EventHook", "Listener", "SessionOptions", "TcpEndpoint", "TcpListener", "connect",
    "connect_tcp", "discover_behavior", "listen", "listen_tcp", "open_endpoint", "open_tcp_endpoint",
    "refresh_mappings",
]


def __getattr__(name: str):
    # the TCP endpoint's module is imported on first use: a UDP connect does not pay for it (issue 13)
    if name in ("TcpEndpoint", "open_tcp_endpoint"):
        from . import tcp

        return getattr(tcp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
