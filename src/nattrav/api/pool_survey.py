"""Which addresses of its pool a symmetric NAT with "arbitrary" pooling (RFC 4787 §4.1) sends from,
as the rendezvous server's observation port sees them.

Why: such a NAT takes any address of its pool for each new flow, so the address a peer's relay
permission must name (RFC 8656 permissions are per IP) is not known until the flow exists, and the
relay never tells anyone about a packet it dropped. The listener's flow to the asking side's relayed
address is such a flow: a permission for the one address the server saw its punch socket on covered
it 1 time in 3 with a pool of 3. So a side whose own flows showed several public addresses asks the
observation port from fresh sockets too (each a new flow, so a new draw from the pool) and hands the
server a ticket per new address; the server publishes them with the punch socket's, and the
allocating peer permits every address the server saw (api/relay.py). The server vouches for each
(return routability: a ticket goes only to the address it names), so nothing the peer merely claims
gets a permission.

With a pool of n addresses, k fresh sockets miss one of them with probability <= n·(1 - 1/n)^k:
SOCKETS = 32 leaves 4e-4 for a pool of 4, 3e-2 for one of 6, 0.11 for 8 (observe.MAX_OBSERVED)."""

from __future__ import annotations

from typing import Any

import trio

from ..io.stun_client import run_transactions
from ..proto.rendezvous.observe import MAX_OBSERVED, new_addresses, observe_request, ticket_of
from ..proto.stun_client import Transaction
from ..proto.vocab import Mapping

SOCKETS = 32
# each answered at once by the observation port, or never (it is an extra): retransmit once
RTO, RC, RM = 0.15, 2, 1


def needs_survey(mapping: Mapping | None, ips: set) -> bool:
    """A mapping per destination (ADM, APDM) whose flows already showed several public addresses:
    each new flow may leave from any address of the pool."""
    return mapping in (Mapping.ADM, Mapping.APDM) and len(ips) > 1


async def survey_pool(observe: tuple[str, int], src_ip: str | None, known_ips: list[str],
                      sockets: int = SOCKETS) -> list[tuple[tuple[str, int], bytes]]:
    """(address, ticket) for each public address the observation port saw our fresh sockets on
    that is not in `known_ips`, at most MAX_OBSERVED - 1 (the punch socket's own keeps its place).
    Sockets that cannot be opened, or requests not answered, just count for nothing."""
    socks: list[Any] = []
    try:
        for _ in range(sockets):
            s = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            socks.append(s)
            await s.bind((src_ip or "0.0.0.0", 0))
        jobs = [(s, Transaction(observe_request(), observe, rto=RTO, rc=RC, rm=RM)) for s in socks]
        results = await run_transactions(jobs)
    except OSError:
        return []
    finally:
        for s in socks:
            s.close()
    found = [ticket_of(r.message, r.mapped) if r is not None and r.ok else None for r in results]
    return new_addresses(found, known_ips, MAX_OBSERVED - 1)


__all__ = ["SOCKETS", "needs_survey", "survey_pool"]
