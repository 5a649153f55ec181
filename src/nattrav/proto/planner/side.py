"""One peer as the UDP planner sees it: its report's behaviour words, public endpoint and port
prediction, and the properties the strategies are chosen by (reachable, fixed, sequential, ...)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...errors import BadReport
from .. import predict as _predict
from . import pool as _pool
from ..predict import Kind, Prediction
from ..port_block import at_top
from ..report import NatReport
from .budget import DEFAULT_FLOW_BUDGET
from ..vocab import Filtering, Mapping

DEFAULT_TARGET = 0.999
DEFAULT_HORIZON = 1.0  # seconds from the last STUN sample to the punch (rendezvous start margin + slack)


@dataclass(frozen=True)
class Side:
    """One peer as the planner sees it: behaviour words, public endpoint, port prediction."""

    mapping: Mapping
    filtering: Filtering  # EIF for no NAT whose filtering was not measured: nothing filters
    ip: str
    port: int  # the STUN socket's (last) mapped port
    prediction: Prediction
    port_range: tuple[int, int]
    budget: int = DEFAULT_FLOW_BUDGET  # new flows this side's part may open on its own NATs (its report's)
    # A NAT that draws each new mapping's address from a pool (pool.py): the other addresses the
    # server saw this side on, aimed at beside `ip`, and the evidence (distinct addresses, draws)
    aim: tuple[str, ...] = ()
    pool: tuple[int, int] = (1, 1)
    # the same prediction as far as this side's own budget reaches, where that is further than the
    # peer's (which bounds `prediction`'s windows): what a spread of its own sockets covers
    # (planner/udp._spread); None when no further
    wide: Prediction | None = None

    @property
    def kind(self) -> Kind:
        return self.prediction.kind

    @property
    def reachable(self) -> bool:
        """Anyone can send to ip:port unasked: no NAT, or EIM with EIF (a "full cone")."""
        if self.mapping is Mapping.NONE:
            return True
        return self.mapping is Mapping.EIM and self.filtering is Filtering.EIF

    @property
    def fixed(self) -> bool:
        """The mapping towards the peer is the one STUN saw (EIM, or Δ = 0)."""
        return self.mapping in (Mapping.NONE, Mapping.EIM) or self.kind is Kind.FIXED

    @property
    def sequential(self) -> bool:
        return not self.fixed and self.kind is Kind.SEQUENTIAL

    @property
    def random(self) -> bool:
        return not self.fixed and self.kind in (Kind.RANDOM, Kind.UNKNOWN)

    @property
    def consumes(self) -> bool:
        """Every probe to a new peer port takes the next port (APDM, sequential)."""
        return self.sequential and self.mapping is Mapping.APDM

    @property
    def delta_confidence(self) -> float:
        """P(this side's step Δ is the one fitted), when its ports are predicted on Δ's grid
        (predict.delta_posterior); 1 when nothing is predicted on a grid."""
        return self.prediction.delta_confidence if self.sequential else 1.0

    @property
    def scattered(self) -> bool:
        """Its flows showed several public addresses for one socket: each new mapping draws one."""
        return self.pool[0] > 1

    def reach(self, aimed: int) -> float:
        """P(this side's next mapping leaves from one of the first `aimed` of its addresses (`ip`,
        then `aim`)): 1 for a NAT that keeps one address."""
        return _pool.reach(aimed, *self.pool) if self.scattered else 1.0

    def addresses(self, sender: Side) -> tuple[str, ...]:
        """Where `sender` aims at this side: every address of its pool the server saw, unless each
        of sender's packets to a new address is a new mapping that moves its own predicted ports."""
        return (self.ip, *self.aim) if self.aim and not sender.consumes else (self.ip,)

    @property
    def span(self) -> int:
        return self.port_range[1] - self.port_range[0] + 1

    def next_port(self, k: int) -> int:
        """The port of the k-th (0-based) new mapping after the last sample, with no noise."""
        if self.fixed:
            return self.port
        return self.prediction.model.advance(self.port, k + 1)

    def describe(self) -> str:
        if self.mapping is Mapping.NONE:
            return "no NAT"
        model = self.prediction.model
        seen = (f", {model.extra} foreign flows in {model.exposure * 1000:.0f} ms seen" if model.per_second
                else f", {model.extra} foreign flows in {model.exposure:.0f} sample intervals seen")
        alloc = {Kind.FIXED: "port kept", Kind.SEQUENTIAL: f"sequential Δ={model.delta}{seen}",
                 Kind.RANDOM: "random ports", Kind.UNKNOWN: "unpredictable ports"}[self.kind]
        if self.mapping is Mapping.EIM:
            alloc = "port kept"
        elif self.sequential and self.delta_confidence < 0.995:
            # the assumption a failed predicted plan most likely broke, said up front
            alloc += (f", {self.delta_confidence:.0%} sure of Δ: its gaps may all be multiples of a "
                      "smaller step on a busy NAT")
        return (f"{self.mapping.words} mapping ({self.mapping.short}, {alloc}), "
                f"{self.filtering.words} filtering ({self.filtering})")


def at_block_top(report: NatReport) -> bool:
    """The side's last sample is the top of the block it published (port_block.at_top)."""
    return bool(report.samples) and at_top(report.port_range, report.samples[-1].port, report.delta)


def side_from_report(report: NatReport, *, horizon: float = DEFAULT_HORIZON,
                     target: float = DEFAULT_TARGET, max_window: int = 4096) -> Side:
    """One peer as the planner sees it. BadReport when the report names no public endpoint (a report
    published for TCP only); everything else was checked by its schema (proto/report.py)."""
    obs = _predict.Observation.from_report(report)
    mapping, filtering = report.mapping, report.filtering
    prediction = _predict.predict(obs, elapsed=horizon, target=target, max_window=max_window)
    if mapping is None:
        mapping = Mapping.EIM if prediction.kind is Kind.FIXED else Mapping.APDM
    if filtering is None:
        filtering = Filtering.EIF if mapping is Mapping.NONE else Filtering.APDF
    if mapping is Mapping.EIM and prediction.kind is not Kind.FIXED:
        # EIM keeps one mapping per socket whatever the samples suggest (they may come from
        # different sockets); trust the mapping word.
        prediction = replace(prediction, kind=Kind.FIXED)
    if report.public is None:
        raise BadReport("report has no public endpoint (it was published for TCP)")
    ip, port = report.public
    if prediction.kind is not Kind.FIXED and obs.samples:
        port = obs.samples[-1].port  # predictions count from the LAST mapping seen
    return Side(mapping, filtering, ip, port, prediction, obs.port_range, report.flows)
