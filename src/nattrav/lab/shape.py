"""The lab's wiring as data, apart from the NATs: impaired links, routers on the path, the LAN's kind.

    LinkSpec   one link's delay distribution, loss, reordering, rate and queue (the delay line's job)
    Shape      routers between each side's outermost NAT and the core router, the impairment on each
               side's access link, and whether the hosts behind a NAT share one switched segment

Like NatSpec, a description is checked by validate() (one-line LabError with the fix) and rendered by
pure functions (topology.py, wire.dir_config); the tests measure the running lab against it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import LabError

DISTRIBUTIONS = ("uniform", "normal")
LANS = ("routed", "switched")
MAX_DELAY_MS = 10_000.0
MAX_RATE_MBIT = 100_000.0
LIMIT_MIN, LIMIT_MAX = 64, 262_144
MAX_ROUTERS = 30


def _number(where: str, name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise LabError(f"{where}: {name} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise LabError(f"{where}: {name} {value} is out of range; choose {lo:g}..{hi:g}")
    return float(value)


@dataclass(frozen=True)
class LinkSpec:
    """One impaired link, the same in both directions: each frame waits delay_ms plus a jitter draw
    (uniform in ±jitter_ms, or normal with standard deviation jitter_ms, never below 0), is lost with
    probability loss_percent, leaves in arrival order unless `reorder`, crosses at rate_mbit (0: no
    limit) and is dropped when the line already holds `limit` frames."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: str = "uniform"
    loss_percent: float = 0.0
    reorder: bool = False
    rate_mbit: float = 0.0
    limit: int = 20_000

    def validate(self, where: str = "link") -> LinkSpec:
        delay = _number(where, "delay_ms", self.delay_ms, 0.0, MAX_DELAY_MS)
        jitter = _number(where, "jitter_ms", self.jitter_ms, 0.0, MAX_DELAY_MS)
        _number(where, "loss_percent", self.loss_percent, 0.0, 100.0)
        _number(where, "rate_mbit", self.rate_mbit, 0.0, MAX_RATE_MBIT)
        if self.distribution not in DISTRIBUTIONS:
            raise LabError(f"{where}: distribution {self.distribution!r} is unknown; use one of "
                           f"{', '.join(DISTRIBUTIONS)}")
        if self.distribution == "uniform" and jitter > delay:
            raise LabError(f"{where}: jitter_ms {jitter:g} exceeds delay_ms {delay:g}, so a uniform draw "
                           "would ask for negative delays; lower the jitter or use distribution='normal'")
        if not isinstance(self.reorder, bool):
            raise LabError(f"{where}: reorder must be True or False, got {self.reorder!r}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not LIMIT_MIN <= self.limit <= LIMIT_MAX:
            raise LabError(f"{where}: limit {self.limit!r} must be whole frames in {LIMIT_MIN}..{LIMIT_MAX}")
        return self

    def describe(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Shape:
    """Everything about the wiring that is not a NAT.

    routers_a / routers_b: routers between that side's outermost NAT (or public host) and the core
    router, so routers_a + 1 + routers_b routers stand between the two NATs; each answers an expiring
    packet with ICMP time-exceeded. link_a / link_b: the impairment on that side's access link (its
    outermost NAT's WAN link), crossed by everything the side sends to the servers or the peer.
    lan: "routed" gives every host behind a NAT its own link to it (each a hop); "switched" puts them on
    one bridge, one /24 segment, where they reach each other directly (public hosts have no LAN)."""

    routers_a: int = 0
    routers_b: int = 0
    link_a: LinkSpec | None = None
    link_b: LinkSpec | None = None
    lan: str = "routed"
    name: str = dataclasses.field(default="custom", compare=False)

    def validate(self) -> Shape:
        where = f"shape {self.name!r}"
        for side in ("a", "b"):
            n = getattr(self, f"routers_{side}")
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_ROUTERS:
                raise LabError(f"{where}: routers_{side}={n!r}; choose an int in 0..{MAX_ROUTERS}")
            link = getattr(self, f"link_{side}")
            if link is not None:
                if not isinstance(link, LinkSpec):
                    raise LabError(f"{where}: link_{side} must be a LinkSpec or None, not {type(link).__name__}")
                link.validate(f"{where} link_{side}")
        if self.lan not in LANS:
            raise LabError(f"{where}: lan {self.lan!r} is unknown; use one of {', '.join(LANS)}")
        return self

    def routers(self, side: str) -> int:
        return self.routers_a if side == "a" else self.routers_b

    def link(self, side: str) -> LinkSpec | None:
        """The side's access link, when it runs through a delay line (a LinkSpec() with nothing set
        still does: the benchmark measures the line's own cost that way)."""
        return self.link_a if side == "a" else self.link_b

    def describe(self) -> dict:
        d = dataclasses.asdict(self)
        d["name"] = self.name
        return d


def _wan(delay: float, jitter: float, loss: float, **kw) -> LinkSpec:
    return LinkSpec(delay_ms=delay, jitter_ms=jitter, loss_percent=loss, **kw)


SHAPES: dict[str, Shape] = {
    "flat": Shape(name="flat"),
    # 12 routers between the NATs, asymmetric: 4 on a's side, the core, 7 on b's side
    "hops12": Shape(routers_a=4, routers_b=7, name="hops12"),
    # the CI profile: each access link 50 ms one way ±10 ms and 1 % loss, over 12 routers
    "wan50": Shape(routers_a=4, routers_b=7, link_a=_wan(50, 10, 1.0), link_b=_wan(50, 10, 1.0), name="wan50"),
    # a far, lossy path: 150 ms ±30 ms (normal), 2 % loss, reordering allowed, 20 Mbit/s
    "far": Shape(routers_a=6, routers_b=6,
                 link_a=_wan(150, 30, 2.0, distribution="normal", reorder=True, rate_mbit=20),
                 link_b=_wan(150, 30, 2.0, distribution="normal", reorder=True, rate_mbit=20), name="far"),
    "switched": Shape(lan="switched", name="switched"),
}


def resolve_shape(shape: str | Shape | None) -> Shape:
    if shape is None:
        return SHAPES["flat"]
    if isinstance(shape, Shape):
        return shape.validate()
    if isinstance(shape, str) and shape in SHAPES:
        return SHAPES[shape].validate()
    raise LabError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)} or pass a Shape")


def shape_from_dict(d: dict | None) -> Shape:
    """Inverse of Shape.describe() (the CLI keeps lab descriptions as JSON)."""
    if d is None:
        return SHAPES["flat"]
    known = {f.name for f in dataclasses.fields(Shape)}
    unknown = set(d) - known
    if unknown:
        raise LabError(f"unknown shape field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    kw = dict(d)
    for key in ("link_a", "link_b"):
        if kw.get(key) is not None:
            link_fields = {f.name for f in dataclasses.fields(LinkSpec)}
            bad = set(kw[key]) - link_fields
            if bad:
                raise LabError(f"unknown link field(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(link_fields))}")
            kw[key] = LinkSpec(**kw[key])
    return Shape(**kw).validate()
