"""Named NATs and the names a person types for any NAT the lab can build.

    port-restricted                      a preset
    symmetric-seq-7                      a sequential symmetric NAT with any Δ in 1..1000
    symmetric-seq,public_ips=4,pooling=arbitrary,max_flows=4096
                                         a preset with fields changed (any NatSpec field; tcp_mapping,
                                         tcp_filtering, tcp_allocation, tcp_delta set its TcpSpec)
    port-restricted+cgn-random           layers, inside first: a home NAT behind a carrier-grade NAT
    full-cone+symmetric-seq+cgn          three layers

Layers are joined by "+", each with its own ",field=value" changes; the result's name is the text.
"""

from __future__ import annotations

import dataclasses
import re

from .errors import LabError
from .spec import DELTA_MAX, DELTA_MIN, NatSpec, TcpSpec


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
        "EIM", "APDF", "preserve", hairpin=True, name="cgnat",
        outer=NatSpec("EIM", "APDF", "preserve", hairpin=False, name="cgnat-outer"),
    ),
    # routers whose "full cone" / "restricted cone" setting applies to UDP only: TCP stays APDF
    "udp-full-cone": NatSpec("EIM", "EIF", "preserve", tcp=TcpSpec("EIM", "APDF", "preserve"), name="udp-full-cone"),
    "udp-restricted-cone": NatSpec("EIM", "ADF", "preserve", tcp=TcpSpec("EIM", "APDF", "preserve"),
                                   name="udp-restricted-cone"),
    # carrier-grade NATs (meant as an outer layer: "port-restricted+cgn"): RFC 6888 asks for EIM,
    # paired pooling and a cap on ports per subscriber
    "cgn": NatSpec("EIM", "APDF", "preserve", hairpin=True, public_ips=4, flows_per_host=2048, name="cgn"),
    "cgn-random": NatSpec("APDM", "APDF", "random", hairpin=False, public_ips=4, flows_per_host=1024,
                          name="cgn-random"),
    "cgn-seq": NatSpec("APDM", "APDF", "sequential", hairpin=False, public_ips=4, flows_per_host=1024,
                       name="cgn-seq"),
    # a small home router: 4096 flows in its table
    "home-small": NatSpec("EIM", "APDF", "preserve", hairpin=True, max_flows=4096, name="home-small"),
}

_SEQ_RE = re.compile(r"^symmetric-seq-(\d+)$")
_TCP_FIELDS = {"tcp_mapping": "mapping", "tcp_filtering": "filtering", "tcp_allocation": "allocation",
               "tcp_delta": "delta"}


def preset_names() -> list[str]:
    return list(PRESETS)


def _base(name: str) -> NatSpec | None:
    if name in PRESETS:
        return PRESETS[name]
    m = _SEQ_RE.match(name)
    if m:
        delta = int(m.group(1))
        if not DELTA_MIN <= delta <= DELTA_MAX:
            raise LabError(f"preset {name!r}: delta {delta} is out of range; choose {DELTA_MIN}..{DELTA_MAX}")
        return _seq(delta)
    raise LabError(
        f"unknown NAT preset {name!r}; choose one of {', '.join(PRESETS)} or symmetric-seq-N (N in "
        f"{DELTA_MIN}..{DELTA_MAX})"
    )


def _value(text: str):
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _layer(text: str) -> NatSpec:
    """One layer: "preset[,field=value...]"."""
    head, *changes = [p.strip() for p in text.split(",")]
    spec = _base(head)
    if spec is None:
        raise LabError(f"{text!r}: 'none' (a public host) cannot be a NAT layer")
    fields = {f.name for f in dataclasses.fields(NatSpec)} - {"outer", "tcp", "name"}
    kw: dict = {}
    tcp: dict = {}
    for change in changes:
        key, eq, raw = change.partition("=")
        key = key.strip()
        if not eq:
            raise LabError(f"{text!r}: {change!r} is not field=value")
        if key in _TCP_FIELDS:
            tcp[_TCP_FIELDS[key]] = _value(raw.strip())
        elif key in fields:
            kw[key] = _value(raw.strip())
        else:
            raise LabError(f"{text!r}: unknown field {key!r}; known: {', '.join(sorted(fields | set(_TCP_FIELDS)))}")
    if tcp:
        base = spec.tcp or TcpSpec(spec.mapping, spec.filtering, spec.allocation, spec.delta)
        kw["tcp"] = dataclasses.replace(base, **tcp)
    return dataclasses.replace(spec, **kw) if kw else spec


def resolve(spec: str | NatSpec | None) -> NatSpec | None:
    """A preset name (see the module doc for the grammar) or a NatSpec -> a validated NatSpec, or None
    for a public host."""
    if spec is None:
        return None
    if isinstance(spec, NatSpec):
        return spec.validate()
    if not isinstance(spec, str):
        raise LabError(f"a NAT is a preset name or a NatSpec, not {type(spec).__name__}")
    text = spec.strip()
    if text == "none":
        return None
    parts = [p for p in text.split("+")]
    if any(not p.strip() for p in parts):
        raise LabError(f"{spec!r}: an empty layer between '+' signs")
    if len(parts) == 1 and "," not in text:
        found = _base(text)
        return None if found is None else found.validate()
    flat: list[NatSpec] = []
    for part in parts:
        flat += _layer(part).chain
    outer = None
    for layer in reversed(flat[1:]):
        outer = dataclasses.replace(layer, outer=outer)
    return dataclasses.replace(flat[0], outer=outer, name=text).validate()
