"""A NAT described as data (RFC 4787 words), the named presets, and the checks on a description.

The lab renders a NatSpec into nftables (see nftables.py); the tests measure the namespaces and compare
what they saw with the NatSpec, so this module is the single statement of what each preset should do.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .errors import LabError

MAPPINGS = ("EIM", "ADM", "APDM")
FILTERINGS = ("EIF", "ADF", "APDF")
ALLOCATIONS = ("preserve", "sequential", "random")
TCP_UNSOLICITED = ("drop", "rst")

DELTA_MIN, DELTA_MAX = 1, 1000
TIMEOUT_MIN, TIMEOUT_MAX = 1, 3600
# Sequential NATs hand out ports from this base upwards (base + k*delta); below it stay the ports a
# preserving NAT keeps, so the two never collide in one namespace.
SEQ_BASE = 20000
SEQ_TOP = 65000


@dataclass(frozen=True)
class NatSpec:
    """One NAT box. Contradictions are reported by validate(), not by the constructor, so that a
    description can be built up with dataclasses.replace() and checked once."""

    mapping: str = "EIM"
    filtering: str = "APDF"
    allocation: str = "preserve"
    delta: int = 1
    hairpin: bool = True
    udp_timeout: int = 30
    tcp_unsolicited: str = "drop"
    loss_percent: float = 0.0
    outer: NatSpec | None = None
    name: str = dataclasses.field(default="custom", compare=False)

    def validate(self) -> NatSpec:
        """Return self when the description can be built; raise LabError (one line, with a fix) if not."""
        where = f"NAT {self.name!r}"
        if self.mapping not in MAPPINGS:
            raise LabError(f"{where}: mapping {self.mapping!r} is unknown; use one of {', '.join(MAPPINGS)}")
        if self.filtering not in FILTERINGS:
            raise LabError(
                f"{where}: filtering {self.filtering!r} is unknown; use one of {', '.join(FILTERINGS)}"
            )
        if self.allocation not in ALLOCATIONS:
            raise LabError(
                f"{where}: allocation {self.allocation!r} is unknown; use one of {', '.join(ALLOCATIONS)}"
            )
        if self.tcp_unsolicited not in TCP_UNSOLICITED:
            raise LabError(f"{where}: tcp_unsolicited {self.tcp_unsolicited!r} is unknown; use 'drop' or 'rst'")
        if not isinstance(self.delta, int) or isinstance(self.delta, bool):
            raise LabError(f"{where}: delta must be an int, got {self.delta!r}")
        if not DELTA_MIN <= self.delta <= DELTA_MAX:
            raise LabError(f"{where}: delta {self.delta} is out of range; choose {DELTA_MIN}..{DELTA_MAX}")
        if self.allocation != "sequential" and self.delta != 1:
            raise LabError(
                f"{where}: delta={self.delta} only means something with allocation='sequential'; "
                "set allocation='sequential' or leave delta at 1"
            )
        if not isinstance(self.udp_timeout, int) or not TIMEOUT_MIN <= self.udp_timeout <= TIMEOUT_MAX:
            raise LabError(
                f"{where}: udp_timeout {self.udp_timeout!r} must be whole seconds in {TIMEOUT_MIN}..{TIMEOUT_MAX}"
            )
        if not 0.0 <= float(self.loss_percent) <= 100.0:
            raise LabError(f"{where}: loss_percent {self.loss_percent} must be within 0..100")
        # Linux keeps the source port whenever the new 5-tuple is unique, which it always is towards a
        # new destination: a preserving NAT therefore cannot give a destination-dependent mapping.
        if self.mapping != "EIM" and self.allocation == "preserve":
            raise LabError(
                f"{where}: mapping {self.mapping} with port preservation would reuse the same public port "
                "for every destination (that is EIM); use allocation='sequential' or 'random'"
            )
        # A NAT that opens its inbound filter wider than its mapping is not a thing RFC 4787 describes
        # (the filter is keyed by the mapping): EIF/ADF on top of a per-destination mapping is refused.
        if self.mapping == "APDM" and self.filtering != "APDF":
            raise LabError(
                f"{where}: mapping APDM gives each destination its own port, so filtering "
                f"{self.filtering} has nothing to open; use filtering='APDF'"
            )
        if self.mapping == "ADM" and self.filtering == "EIF":
            raise LabError(
                f"{where}: mapping ADM with filtering EIF is contradictory; use filtering='ADF' or 'APDF'"
            )
        if self.outer is not None:
            if not isinstance(self.outer, NatSpec):
                raise LabError(f"{where}: outer must be a NatSpec or None, got {type(self.outer).__name__}")
            if self.outer.outer is not None:
                raise LabError(f"{where}: at most two NAT layers are supported; drop outer.outer")
            self.outer.validate()
        return self

    @property
    def layers(self) -> int:
        """How many NAT boxes a host behind this spec crosses to reach the router."""
        return 1 if self.outer is None else 2

    def with_timeout(self, seconds: int) -> NatSpec:
        """The same NAT (and its outer layer) with another UDP mapping lifetime: tests use short ones."""
        outer = None if self.outer is None else self.outer.with_timeout(seconds)
        return dataclasses.replace(self, udp_timeout=seconds, outer=outer)

    def describe(self) -> dict:
        d = {
            "name": self.name,
            "mapping": self.mapping,
            "filtering": self.filtering,
            "allocation": self.allocation,
            "delta": self.delta,
            "hairpin": self.hairpin,
            "udp_timeout": self.udp_timeout,
            "tcp_unsolicited": self.tcp_unsolicited,
            "loss_percent": self.loss_percent,
        }
        d["outer"] = None if self.outer is None else self.outer.describe()
        return d


def _seq(delta: int) -> NatSpec:
    name = "symmetric-seq" if delta == 1 else f"symmetric-seq-{delta}"
    return NatSpec("APDM", "APDF", "sequential", delta=delta, hairpin=False, name=name)


# "none" is a public host: no NatSpec at all (the host sits on the internet side).
PUBLIC = None

PRESETS: dict[str, NatSpec | None] = {
    "none": PUBLIC,
    "full-cone": NatSpec("EIM", "EIF", "preserve", hairpin=True, name="full-cone"),
    "restricted-cone": NatSpec("EIM", "ADF", "preserve", hairpin=True, name="restricted-cone"),
    "port-restricted": NatSpec("EIM", "APDF", "preserve", hairpin=True, name="port-restricted"),
    "symmetric-seq": _seq(1),
    "symmetric-seq-2": _seq(2),
    "symmetric-seq-7": _seq(7),
    "symmetric-random": NatSpec("APDM", "APDF", "random", hairpin=False, name="symmetric-random"),
    "adm": NatSpec("ADM", "ADF", "sequential", delta=1, hairpin=False, name="adm"),
    "cgnat": NatSpec(
        "EIM",
        "APDF",
        "preserve",
        hairpin=True,
        name="cgnat",
        outer=NatSpec("EIM", "APDF", "preserve", hairpin=False, name="cgnat-outer"),
    ),
}

_SEQ_RE = re.compile(r"^symmetric-seq-(\d+)$")


def resolve(spec: str | NatSpec | None) -> NatSpec | None:
    """A preset name ("symmetric-seq-N" for any N in range) or a NatSpec -> a validated NatSpec, or
    None for a public host."""
    if spec is None:
        return None
    if isinstance(spec, NatSpec):
        return spec.validate()
    if not isinstance(spec, str):
        raise LabError(f"a NAT is a preset name or a NatSpec, not {type(spec).__name__}")
    if spec in PRESETS:
        found = PRESETS[spec]
        return None if found is None else found.validate()
    m = _SEQ_RE.match(spec)
    if m:
        delta = int(m.group(1))
        if not DELTA_MIN <= delta <= DELTA_MAX:
            raise LabError(f"preset {spec!r}: delta {delta} is out of range; choose {DELTA_MIN}..{DELTA_MAX}")
        return _seq(delta).validate()
    raise LabError(
        f"unknown NAT preset {spec!r}; choose one of {', '.join(PRESETS)} or symmetric-seq-N (N in "
        f"{DELTA_MIN}..{DELTA_MAX})"
    )


def preset_names() -> list[str]:
    return list(PRESETS)


def from_dict(d: dict | None) -> NatSpec | None:
    """Inverse of NatSpec.describe() (the CLI keeps lab descriptions as JSON)."""
    if d is None:
        return None
    known = {f.name for f in dataclasses.fields(NatSpec)}
    unknown = set(d) - known
    if unknown:
        raise LabError(f"unknown NAT field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    kw = dict(d)
    kw["outer"] = from_dict(kw.get("outer"))
    return NatSpec(**kw).validate()


_ORDER = {"EIM": 0, "ADM": 1, "APDM": 2, "EIF": 0, "ADF": 1, "APDF": 2}


def effective(spec: NatSpec | None) -> dict | None:
    """What a host behind this NAT (and its outer layer) should measure, from the outside world."""
    if spec is None:
        return None
    if spec.outer is None:
        return {
            "mapping": spec.mapping,
            "filtering": spec.filtering,
            "allocation": spec.allocation,
            "delta": spec.delta if spec.allocation == "sequential" else 0,
            "hairpin": spec.hairpin,
            "udp_timeout": spec.udp_timeout,
            "tcp_unsolicited": spec.tcp_unsolicited,
            "loss_percent": spec.loss_percent,
        }
    inner, outer = spec, spec.outer
    worst = lambda x, y: x if _ORDER[x] >= _ORDER[y] else y  # noqa: E731
    if inner.allocation == "preserve":
        alloc, delta = outer.allocation, outer.delta
    elif outer.allocation == "preserve":
        alloc, delta = inner.allocation, inner.delta
    else:
        alloc, delta = "random", 0  # two translating allocators compose into no usable pattern
    return {
        "mapping": worst(inner.mapping, outer.mapping),
        "filtering": worst(inner.filtering, outer.filtering),
        "allocation": alloc,
        "delta": delta if alloc == "sequential" else 0,
        # a hairpinned packet comes back to the inner NAT from the public address: it passes only if
        # the outer NAT hairpins and the inner one lets unsolicited traffic in
        "hairpin": outer.hairpin and inner.filtering == "EIF",
        "udp_timeout": min(inner.udp_timeout, outer.udp_timeout),
        "tcp_unsolicited": outer.tcp_unsolicited,
        "loss_percent": 100.0 * (1 - (1 - inner.loss_percent / 100) * (1 - outer.loss_percent / 100)),
    }
