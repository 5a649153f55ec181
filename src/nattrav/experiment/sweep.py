"""A declarative sweep, sans-IO: a spec (a dict, or the same as TOML) names the axes, and expand()
turns it into trials grouped by lab case, each with a stable key (so a rerun can skip what an output
file already holds).

    name = "budget"            # the sweep's name, recorded with every trial
    repeats = 3                # trials per point
    seed = 1                   # orders the trials of a case (recorded)
    timeout = 20               # seconds a trial may take to connect
    transport = "udp"          # or "tcp": connect_tcp/listen_tcp (TCP traversal)
    [axes]
    pair = [["symmetric-random", "port-restricted"]]   # or left = [...] and right = [...]
    shape = ["flat"]           # lab shapes (nattrav-lab list)
    background = [0, 200]      # other hosts' new flows a second behind each NAT
    max_flows = [128, 512]     # any session option a user could set: ttl, max_flows, target, horizon,
                               # max_sockets, birthday_sockets, max_window, best_effort_flows, workers
    [traffic]                  # optional: measure this over every punched path
    rate = "20M"
    time = 1
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from .agent import TRAFFIC_KEYS, USER_OPTIONS
from .trial import Case

LAB_AXES = ("pair", "left", "right", "shape", "background")
TOP_KEYS = {"name", "repeats", "seed", "timeout", "axes", "traffic", "transport"}
TRANSPORTS = ("udp", "tcp")
MAX_TRIALS = 100_000


@dataclass(frozen=True)
class Trial:
    case: Case
    options: dict[str, Any]
    repeat: int
    key: str

    def describe(self) -> str:
        opts = " ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.case.left}↔{self.case.right} {self.case.shape} bg={self.case.background:g} {opts} #{self.repeat}"


def trial_key(case: Case, options: dict[str, Any], repeat: int) -> str:
    raw = json.dumps({"case": list(case.key()), "options": options, "repeat": repeat}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _list(axes: dict[str, Any], name: str, default: list) -> list:
    v = axes.get(name, default)
    if not isinstance(v, list) or not v:
        raise UsageError(f"axis {name!r} must be a non-empty list, got {v!r}")
    return v


def check(spec: dict[str, Any]) -> None:
    """UsageError naming the first thing wrong with `spec`."""
    if not isinstance(spec, dict):
        raise UsageError("a sweep spec is a table (dict)")
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise UsageError(f"unknown sweep keys: {sorted(unknown)} (known: {sorted(TOP_KEYS)})")
    if spec.get("transport", "udp") not in TRANSPORTS:
        raise UsageError(f"transport must be one of {list(TRANSPORTS)}, got {spec.get('transport')!r}")
    axes = spec.get("axes")
    if not isinstance(axes, dict):
        raise UsageError("a sweep needs an [axes] table")
    bad = set(axes) - set(LAB_AXES) - USER_OPTIONS
    if bad:
        raise UsageError(f"unknown axes: {sorted(bad)}; lab axes {list(LAB_AXES)}, session options "
                         f"{sorted(USER_OPTIONS)}")
    if "pair" in axes and ("left" in axes or "right" in axes):
        raise UsageError("give either pair or left/right, not both")
    if not isinstance(spec.get("repeats", 1), int) or not 1 <= spec.get("repeats", 1) <= 10_000:
        raise UsageError("repeats must be an integer in 1..10000")
    traffic = spec.get("traffic")
    if traffic is not None and (not isinstance(traffic, dict) or set(traffic) - TRAFFIC_KEYS):
        raise UsageError(f"[traffic] takes only {sorted(TRAFFIC_KEYS)}")
    from ..lab.errors import LabError
    from ..lab.shape import resolve_shape
    from ..lab.spec import resolve

    for pair in _pairs(axes):
        for name in pair:
            try:
                resolve(name)
            except LabError as exc:
                raise UsageError(f"NAT {name!r}: {exc}") from None
    for shape in _list(axes, "shape", ["flat"]):
        try:
            resolve_shape(shape)
        except LabError as exc:
            raise UsageError(f"shape {shape!r}: {exc}") from None


def _pairs(axes: dict[str, Any]) -> list[tuple[str, str]]:
    if "pair" in axes:
        pairs = _list(axes, "pair", [])
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
            raise UsageError("each pair is [left, right]")
        return [(str(a), str(b)) for a, b in pairs]
    return list(itertools.product(_list(axes, "left", ["symmetric-seq"]), _list(axes, "right", ["port-restricted"])))


def expand(spec: dict[str, Any]) -> list[tuple[Case, list[Trial]]]:
    """Every trial of the sweep, grouped by lab case (a lab comes up once a case); within a case the
    trials are shuffled by the spec's seed, so no option value always runs first on a fresh lab."""
    check(spec)
    axes = spec["axes"]
    repeats = spec.get("repeats", 1)
    rng = random.Random(spec.get("seed", 0))
    option_axes = sorted(k for k in axes if k in USER_OPTIONS)
    points = [dict(zip(option_axes, vals)) for vals in itertools.product(*(_list(axes, k, []) for k in option_axes))]
    out = []
    total = 0
    for (left, right), shape, bg in itertools.product(_pairs(axes), _list(axes, "shape", ["flat"]),
                                                      _list(axes, "background", [0])):
        case = Case(left, right, str(shape), float(bg))
        trials = [Trial(case, opts, r, trial_key(case, opts, r)) for opts in points for r in range(repeats)]
        rng.shuffle(trials)
        total += len(trials)
        out.append((case, trials))
    if total > MAX_TRIALS:
        raise UsageError(f"the sweep has {total} trials (at most {MAX_TRIALS})")
    return out
