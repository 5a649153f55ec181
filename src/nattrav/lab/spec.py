"""A NAT described as data (RFC 4787 words), and the checks on a description.

The lab renders a NatSpec into nftables (nftables.py); the tests measure the namespaces and compare
what they saw with effective(spec), so this module is the single statement of what each NAT should do.
Named presets and the preset-name grammar live in presets.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import LabError

MAPPINGS = ("EIM", "ADM", "APDM")
FILTERINGS = ("EIF", "ADF", "APDF")
ALLOCATIONS = ("preserve", "sequential", "random")
TCP_UNSOLICITED = ("drop", "rst")
POOLINGS = ("paired", "arbitrary")

DELTA_MIN, DELTA_MAX = 1, 1000
TIMEOUT_MIN, TIMEOUT_MAX = 1, 3600
TCP_TIMEOUT_MAX = 432_000  # Linux's own default for an established TCP flow (5 days)
TCP_TIMEOUT_DEFAULT = 7440  # RFC 5382 REQ-5: at least 2 h 4 min for an established TCP mapping
MAX_LAYERS = 3
MAX_PUBLIC_IPS = 8
FLOWS_MIN, FLOWS_MAX = 16, 262_144
# Sequential NATs hand out ports from this base upwards (base + k*delta); below it stay the ports a
# preserving NAT keeps, so the two never collide in one namespace.
SEQ_BASE = 20000
SEQ_TOP = 65000


def check_behaviour(where: str, mapping: str, filtering: str, allocation: str, delta: int) -> None:
    """The RFC 4787 triple (plus Δ) is something the lab can build, or a LabError says why not."""
    if mapping not in MAPPINGS:
        raise LabError(f"{where}: mapping {mapping!r} is unknown; use one of {', '.join(MAPPINGS)}")
    if filtering not in FILTERINGS:
        raise LabError(f"{where}: filtering {filtering!r} is unknown; use one of {', '.join(FILTERINGS)}")
    if allocation not in ALLOCATIONS:
        raise LabError(f"{where}: allocation {allocation!r} is unknown; use one of {', '.join(ALLOCATIONS)}")
    if not isinstance(delta, int) or isinstance(delta, bool):
        raise LabError(f"{where}: delta must be an int, got {delta!r}")
    if not DELTA_MIN <= delta <= DELTA_MAX:
        raise LabError(f"{where}: delta {delta} is out of range; choose {DELTA_MIN}..{DELTA_MAX}")
    if allocation != "sequential" and delta != 1:
        raise LabError(
            f"{where}: delta={delta} only means something with allocation='sequential'; "
            "set allocation='sequential' or leave delta at 1"
        )
    # Linux keeps the source port whenever the new 5-tuple is unique, which it always is towards a
    # new destination: a preserving NAT therefore cannot give a destination-dependent mapping.
    if mapping != "EIM" and allocation == "preserve":
        raise LabError(
            f"{where}: mapping {mapping} with port preservation would reuse the same public port "
            "for every destination (that is EIM); use allocation='sequential' or 'random'"
        )
    # A NAT that opens its inbound filter wider than its mapping is not a thing RFC 4787 describes
    # (the filter is keyed by the mapping): EIF/ADF on top of a per-destination mapping is refused.
    if mapping == "APDM" and filtering != "APDF":
        raise LabError(
            f"{where}: mapping APDM gives each destination its own port, so filtering "
            f"{filtering} has nothing to open; use filtering='APDF'"
        )
    if mapping == "ADM" and filtering == "EIF":
        raise LabError(f"{where}: mapping ADM with filtering EIF is contradictory; use filtering='ADF' or 'APDF'")


@dataclass(frozen=True)
class TcpSpec:
    """TCP's own behaviour on a NAT that treats TCP differently from UDP (e.g. a router whose "full
    cone" setting applies to UDP only, TCP staying port-restricted)."""

    mapping: str = "EIM"
    filtering: str = "APDF"
    allocation: str = "preserve"
    delta: int = 1

    def validate(self, where: str = "TCP") -> TcpSpec:
        check_behaviour(where, self.mapping, self.filtering, self.allocation, self.delta)
        return self


def _whole(where: str, name: str, value, lo: int, hi: int, *, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise LabError(f"{where}: {name} {value!r} must be whole numbers in {lo}..{hi}"
                       + (" (or None: no limit)" if none_ok else ""))


@dataclass(frozen=True)
class NatSpec:
    """One NAT box. Contradictions are reported by validate(), not by the constructor, so that a
    description can be built up with dataclasses.replace() and checked once.

    mapping/filtering/allocation/delta describe UDP, and TCP too unless `tcp` gives TCP its own.
    udp_timeout / tcp_timeout: mapping lifetimes (idle UDP; established TCP). public_ips: the size of
    the NAT's address pool, handed out `pooling` = "paired" (one public address per inside address)
    or "arbitrary" (any, per mapping) — RFC 4787 §4.1. max_flows caps the NAT's flow table,
    flows_per_host the flows one inside address may hold (a CGN's ports per subscriber); a full table
    drops new flows. outer: the NAT this one sits behind (a CGN), up to three layers."""

    mapping: str = "EIM"
    filtering: str = "APDF"
    allocation: str = "preserve"
    delta: int = 1
    hairpin: bool = True
    udp_timeout: int = 30
    tcp_unsolicited: str = "drop"
    loss_percent: float = 0.0
    outer: NatSpec | None = None
    tcp: TcpSpec | None = None
    tcp_timeout: int = TCP_TIMEOUT_DEFAULT
    public_ips: int = 1
    pooling: str = "paired"
    max_flows: int | None = None
    flows_per_host: int | None = None
    name: str = dataclasses.field(default="custom", compare=False)

    def validate(self) -> NatSpec:
        """Return self when the description can be built; raise LabError (one line, with a fix) if not."""
        where = f"NAT {self.name!r}"
        check_behaviour(where, self.mapping, self.filtering, self.allocation, self.delta)
        if self.tcp_unsolicited not in TCP_UNSOLICITED:
            raise LabError(f"{where}: tcp_unsolicited {self.tcp_unsolicited!r} is unknown; use 'drop' or 'rst'")
        if not isinstance(self.hairpin, bool):
            raise LabError(f"{where}: hairpin must be True or False, got {self.hairpin!r}")
        if not isinstance(self.udp_timeout, int) or not TIMEOUT_MIN <= self.udp_timeout <= TIMEOUT_MAX:
            raise LabError(
                f"{where}: udp_timeout {self.udp_timeout!r} must be whole seconds in {TIMEOUT_MIN}..{TIMEOUT_MAX}"
            )
        _whole(where, "tcp_timeout", self.tcp_timeout, TIMEOUT_MIN, TCP_TIMEOUT_MAX)
        try:
            loss_ok = 0.0 <= float(self.loss_percent) <= 100.0
        except (TypeError, ValueError):
            loss_ok = False
        if not loss_ok:
            raise LabError(f"{where}: loss_percent {self.loss_percent} must be within 0..100")
        if self.tcp is not None:
            if not isinstance(self.tcp, TcpSpec):
                raise LabError(f"{where}: tcp must be a TcpSpec or None, got {type(self.tcp).__name__}")
            self.tcp.validate(f"{where} (TCP)")
        _whole(where, "public_ips", self.public_ips, 1, MAX_PUBLIC_IPS)
        if self.pooling not in POOLINGS:
            raise LabError(f"{where}: pooling {self.pooling!r} is unknown; use one of {', '.join(POOLINGS)}")
        if self.pooling == "arbitrary" and self.public_ips == 1:
            raise LabError(f"{where}: pooling='arbitrary' needs an address pool; set public_ips to 2..{MAX_PUBLIC_IPS}")
        _whole(where, "max_flows", self.max_flows, FLOWS_MIN, FLOWS_MAX, none_ok=True)
        _whole(where, "flows_per_host", self.flows_per_host, FLOWS_MIN, FLOWS_MAX, none_ok=True)
        depth, layer = 1, self.outer
        while layer is not None:
            if not isinstance(layer, NatSpec):
                raise LabError(f"{where}: outer must be a NatSpec or None, got {type(layer).__name__}")
            depth += 1
            if depth > MAX_LAYERS:
                raise LabError(f"{where}: at most {MAX_LAYERS} NAT layers are supported; drop the outermost")
            layer = layer.outer
        if self.outer is not None:
            self.outer.validate()
        return self

    def for_tcp(self) -> NatSpec:
        """The same box as TCP sees it (its own mapping/filtering/allocation when `tcp` is set)."""
        if self.tcp is None:
            return self
        t = self.tcp
        return dataclasses.replace(self, mapping=t.mapping, filtering=t.filtering, allocation=t.allocation,
                                   delta=t.delta, tcp=None)

    @property
    def chain(self) -> list[NatSpec]:
        """This NAT and the ones it sits behind, inside first."""
        out, layer = [], self
        while layer is not None:
            out.append(layer)
            layer = layer.outer
        return out

    @property
    def layers(self) -> int:
        """How many NAT boxes a host behind this spec crosses to reach the router."""
        return len(self.chain)

    def with_timeout(self, seconds: int) -> NatSpec:
        """The same NAT (and its outer layers) with another UDP mapping lifetime: tests use short ones."""
        outer = None if self.outer is None else self.outer.with_timeout(seconds)
        return dataclasses.replace(self, udp_timeout=seconds, outer=outer)

    def describe(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("outer", "tcp")}
        d["tcp"] = None if self.tcp is None else dataclasses.asdict(self.tcp)
        d["outer"] = None if self.outer is None else self.outer.describe()
        return d


def from_dict(d: dict | None) -> NatSpec | None:
    """Inverse of NatSpec.describe() (the CLI keeps lab descriptions as JSON)."""
    if d is None:
        return None
    if not isinstance(d, dict):
        raise LabError(f"a NAT description is a JSON object, not {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(NatSpec)}
    unknown = set(d) - known
    if unknown:
        raise LabError(f"unknown NAT field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    kw = dict(d)
    kw["outer"] = from_dict(kw.get("outer"))
    if kw.get("tcp") is not None:
        tcp_known = {f.name for f in dataclasses.fields(TcpSpec)}
        if not isinstance(kw["tcp"], dict) or set(kw["tcp"]) - tcp_known:
            raise LabError(f"tcp must be an object with fields {', '.join(sorted(tcp_known))}")
        kw["tcp"] = TcpSpec(**kw["tcp"])
    return NatSpec(**kw).validate()


_ORDER = {"EIM": 0, "ADM": 1, "APDM": 2, "EIF": 0, "ADF": 1, "APDF": 2}


def _worst(x: str, y: str) -> str:
    return x if _ORDER[x] >= _ORDER[y] else y


def effective(spec: NatSpec | None, proto: str = "udp") -> dict | None:
    """What a host behind this NAT (and every layer it sits behind) should measure, from the outside
    world, for UDP or TCP."""
    if spec is None:
        return None
    layers = [layer.for_tcp() if proto == "tcp" else layer for layer in spec.chain]
    inner, rest = layers[0], layers[1:]
    out = {
        "mapping": inner.mapping, "filtering": inner.filtering, "allocation": inner.allocation,
        "delta": inner.delta if inner.allocation == "sequential" else 0,
        "hairpin": inner.hairpin,
        "udp_timeout": inner.udp_timeout, "tcp_timeout": inner.tcp_timeout,
        "tcp_unsolicited": inner.tcp_unsolicited, "loss_percent": inner.loss_percent,
        "public_ips": inner.public_ips, "pooling": inner.pooling,
    }
    for k, outer in enumerate(rest):
        out["mapping"] = _worst(out["mapping"], outer.mapping)
        out["filtering"] = _worst(out["filtering"], outer.filtering)
        if outer.allocation != "preserve":
            # every new flow of the inner NAT is a new flow here too: the outer allocator decides
            out["allocation"], out["delta"] = outer.allocation, outer.delta if outer.allocation == "sequential" else 0
        # a hairpinned packet comes back to the inner NATs from the outermost public address: it
        # passes only if the outer NAT hairpins and every inner one lets unsolicited traffic in
        out["hairpin"] = outer.hairpin and all(x.filtering == "EIF" for x in layers[: k + 1])
        out["udp_timeout"] = min(out["udp_timeout"], outer.udp_timeout)
        out["tcp_timeout"] = min(out["tcp_timeout"], outer.tcp_timeout)
        out["tcp_unsolicited"] = outer.tcp_unsolicited
        out["loss_percent"] = 100.0 * (1 - (1 - out["loss_percent"] / 100) * (1 - outer.loss_percent / 100))
        out["public_ips"], out["pooling"] = outer.public_ips, outer.pooling
    return out


# the preset table and the name grammar moved to presets.py; these names stay importable from here
from .presets import PRESETS, PUBLIC, preset_names, resolve  # noqa: E402

__all__ = [
    "ALLOCATIONS", "FILTERINGS", "MAPPINGS", "NatSpec", "PRESETS", "PUBLIC", "SEQ_BASE", "SEQ_TOP", "TcpSpec",
    "check_behaviour", "effective", "from_dict", "preset_names", "resolve",
]
