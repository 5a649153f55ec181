"""The UDP strategies' table (cost, whether they need the burst core) and the sentence that says,
in RFC 4787 words, why the planner chose one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..vocab import Strategy
from .side import Side

if TYPE_CHECKING:
    from .udp import Attempt


@dataclass(frozen=True)
class StrategyInfo:
    cost: int  # rank: lower is cheaper; ties broken by packet count
    burst: bool  # needs many sockets / the C burst core
    summary: str


STRATEGIES: dict[Strategy, StrategyInfo] = {
    # raced beside the planned strategy, never instead of it (proto/planner/lan.py)
    Strategy.LAN: StrategyInfo(-1, False, "both send to the other's host candidates inside the same network"),
    Strategy.DIRECT: StrategyInfo(0, False, "one packet each way to a publicly reachable endpoint"),
    Strategy.SIMULTANEOUS: StrategyInfo(1, False, "both send from the STUN socket to the other's mapping"),
    Strategy.ADDRESS_OPEN: StrategyInfo(2, False,
                                        "the address-restricted side opens its filter to the peer's IP"),
    Strategy.PREDICTED: StrategyInfo(3, False, "low-TTL to predicted ports, then normal TTL back"),
    Strategy.BIRTHDAY: StrategyInfo(4, True, "many sockets on the random side, many probes from the other"),
    Strategy.RANDOM_SEQUENTIAL: StrategyInfo(5, True,
                                             "random side fires at the predicted window from many sockets"),
    Strategy.BEST_EFFORT: StrategyInfo(6, True, "bounded random guessing on both sides; a relay is needed"),
}


def explain(strategy: Strategy, local: Side, remote: Side, a: Attempt) -> str:
    L, R = local.describe(), remote.describe()
    if strategy is Strategy.DIRECT:
        who = "the remote" if remote.reachable else "this"
        return (f"local: {L}; remote: {R}: {who} side is reachable unasked (no NAT, or "
                "endpoint-independent mapping and filtering), so the other side's packet gets in and "
                "the answer goes back through the mapping that packet created")
    if strategy is Strategy.SIMULTANEOUS:
        return (f"both mappings are endpoint-independent (local: {L}; remote: {R}): each side sends "
                "from its STUN socket to the other's mapped endpoint, a low-TTL packet first")
    if strategy is Strategy.ADDRESS_OPEN:
        return (f"local: {L}; remote: {R}: the side with endpoint-independent mapping and "
                "address-dependent filtering opens its filter to the peer's address with one low-TTL "
                "packet, then the peer's packet gets in whatever port its NAT picks")
    if strategy is Strategy.PREDICTED:
        opener, talker = (a.local, a.remote) if a.local.opens else (a.remote, a.local)
        if opener.sockets > 1:
            return (f"local: {L}; remote: {R}: ports are predictable, so the counting side opens its next "
                    f"{opener.sockets} mappings at once from as many sockets with low-TTL packets, and "
                    f"the other answers with a normal TTL to {len(talker.targets)} of their ports "
                    f"(the other side's flow budget holds no wider window); odds {a.odds:.4%}")
        return (f"local: {L}; remote: {R}: ports are predictable, so one side sends low-TTL packets "
                f"to {len(opener.targets)} predicted port(s) "
                f"and the other answers with a normal TTL to "
                f"{len(talker.targets)} port(s); "
                f"odds {a.odds:.4%}")
    if strategy is Strategy.BIRTHDAY:
        s = max(a.local.sockets, a.remote.sockets)
        p = max(a.local.random_probes, a.remote.random_probes)
        return (f"local: {L}; remote: {R}: random allocation meets a fixed mapping, so the random side "
                f"opens {s} mappings with low-TTL packets and the other probes {p} random ports; "
                f"odds 1 - C(N-{s},{p})/C(N,{p}) = {a.odds:.4%}")
    if strategy is Strategy.RANDOM_SEQUENTIAL:
        opener = a.local if a.local.opens else a.remote
        guesser = a.remote if a.local.opens else a.local
        return (f"local: {L}; remote: {R}: the random side fires from {opener.sockets} sockets at "
                f"{len(opener.targets)} predicted ports ({opener.flows} flows, within the flow budget: "
                f"--max-flows raises it where the NATs' tables allow) and the sequential side sends "
                f"{guesser.random_probes} guesses; odds {a.odds:.2%}")
    return (f"local: {L}; remote: {R}: random allocation on both sides leaves a 1/(N·N) chance per "
            f"pair of flows; a bounded try has {a.odds:.3%} odds, so a relay (TURN) is needed")
