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

The same addresses let a peer aim a predicted window at every address of the pool (planner/pool.py),
and the survey's draws are the evidence for the pool's size (NatReport.pool_draws). Each fresh
socket's flow is a new mapping that takes the next port of a sequential NAT: the caller folds the
endpoints seen into the punch socket's samples (report.counter_sample), else its next mapping would
be predicted from before them.

With a pool of n addresses, k fresh sockets miss one of them with probability <= n·(1 - 1/n)^k:
SOCKETS = 32 leaves 4e-4 for a pool of 4, 3e-2 for one of 6, 0.11 for 8 (observe.MAX_OBSERVED)."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from ..io.stun_client import from_fresh_sockets
from ..proto.rendezvous.observe import MAX_OBSERVED, new_addresses, observe_request, ticket_of
from ..proto.stun_client import Transaction
from ..proto.vocab import Mapping

SOCKETS = 32
# each answered at once by the observation port, or never (it is an extra): retransmit once
RTO, RC, RM = 0.15, 2, 1


def needs_survey(mapping: Mapping | None, ips: set, discovered: set = frozenset()) -> bool:
    """A mapping per destination (ADM, APDM) whose flows already showed several public addresses:
    each new flow may leave from any address of the pool. `ips`: what the punch socket's flows
    showed; `discovered`: what the behaviour discovery's flows showed (NatBehavior.mapped_ips), free
    draws the punch socket's 3 need not find alone: on a pool of 4 those 3 all leave from one
    address 1 time in 16, and ~10 with discovery's 1 time in 260,000. Only a trigger: the plan aims
    at what the server observed, never at an address only the STUN server saw."""
    return mapping in (Mapping.ADM, Mapping.APDM) and len(set(ips) | set(discovered)) > 1


@dataclass
class Survey:
    """What a pool survey saw: a ticket per new address (what the server is handed), every public
    endpoint it saw, and when its requests left (trio time)."""

    new: list = field(default_factory=list)
    mapped: list = field(default_factory=list)
    started: float = 0.0


async def survey_pool(observe: tuple[str, int], src_ip: str | None, known_ips: list[str],
                      sockets: int = SOCKETS) -> Survey:
    """(address, ticket) for each public address the observation port saw our fresh sockets on
    that is not in `known_ips`, at most MAX_OBSERVED - 1 (the punch socket's own keeps its place),
    and every endpoint seen: each fresh socket's flow is a new mapping, which on a sequential NAT
    takes the next port (report.counter_sample folds them). Sockets that cannot be opened, or
    requests not answered, just count for nothing."""
    try:
        started, results = await from_fresh_sockets(
            sockets, src_ip, lambda: Transaction(observe_request(), observe, rto=RTO, rc=RC, rm=RM))
    except OSError:
        return Survey(started=trio.current_time())
    found = [ticket_of(r.message, r.mapped) if r is not None and r.ok else None for r in results]
    return Survey(new_addresses(found, known_ips, MAX_OBSERVED - 1), [f[0] for f in found if f is not None],
                  started)


__all__ = ["SOCKETS", "Survey", "needs_survey", "survey_pool"]
