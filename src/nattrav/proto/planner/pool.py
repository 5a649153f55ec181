"""A side whose NAT draws each new mapping's public address from a pool ("arbitrary" pooling, RFC
4787 §4.1, with a mapping per destination), sans-IO: how likely the next mapping leaves from one of
the addresses a plan aims at.

Why: nobody can name the address of a new mapping there, but the port may still be predictable, so
the peer aims at every address of the pool the rendezvous server saw (never one the side merely
claims: udp.plan's peer_udp). The pool's size N is not known either: the side knows only that its
own fresh flows showed k distinct addresses in m draws (NatReport.pool, NatReport.pool_draws: the
punch socket's observation and samples, and its pool survey, api/pool_survey.py). With uniform draws
P(those k addresses | N) ∝ N!/(N-k)!/N^m; with a flat prior on N in k..MAX_POOL, the chance that the
next mapping leaves from one of c aimed addresses is E[c/N | k, m]. The 35 draws of a surveyed pool of
4 that showed all 4 give 0.9996 for c = 4; the 3 draws of a side that ran no survey leave N open and
the odds low, as they should be (the matrix holds stated odds to the measured rate).
"""

from __future__ import annotations

import math
from functools import lru_cache

from ..report import MAX_POOL


@lru_cache(maxsize=256)
def reach(aimed: int, distinct: int, draws: int) -> float:
    """P(the next mapping's address is one of `aimed` addresses the side's flows showed), when its
    `draws` fresh flows showed `distinct` addresses of a pool of unknown size (at most MAX_POOL).
    One address seen (no pool evidence) reaches 1 when aimed at: the NAT keeps one address."""
    distinct = max(1, min(distinct, MAX_POOL))
    aimed = max(0, min(aimed, distinct))
    if distinct == 1:
        return 1.0 if aimed else 0.0
    draws = max(draws, distinct)  # k addresses took at least k draws (an older peer names none)
    logs = [math.lgamma(n + 1) - math.lgamma(n - distinct + 1) - draws * math.log(n)
            for n in range(distinct, MAX_POOL + 1)]
    top = max(logs)
    weights = [math.exp(x - top) for x in logs]
    return sum(w * aimed / n for n, w in zip(range(distinct, MAX_POOL + 1), weights)) / sum(weights)


def size_words(distinct: int, draws: int) -> str:
    """The pool evidence in words, for the plan's reason."""
    return f"{distinct} addresses in {max(draws, distinct)} fresh flows"


__all__ = ["reach", "size_words"]
