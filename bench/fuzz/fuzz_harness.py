"""What every fuzz target shares: the contract check, per-call timing, crash records, corpus replay.

A target is a function of one input (bytes) that feeds untrusted bytes to one parser, wrapping each
call that takes attacker bytes in `timed()`, and raising `Violation` when an invariant of the
parser's contract breaks (a buffer beyond its documented bound, a reply aimed at an address nobody
observed, a frame the server cannot encode). Only the parser's one documented error type may
escape; anything else is a crash.

This module needs neither atheris nor sockets: the CI slice (tests/fuzz/) replays the corpus and a
few thousand deterministic mutations of it through the same `Runner`, and run.py drives the same
targets under atheris for the long runs.
"""

from __future__ import annotations

import hashlib
import random
import resource
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
BUDGET_NS = 1_000_000  # no call with one input's bytes may take longer than 1 ms
# An input that raises the process's peak RSS by more than this is a memory finding: every parser
# here bounds what one input may allocate far below it.
RSS_STEP_MB = 64


class Violation(Exception):
    """A contract of the parser broke (not a parse error): the fuzz equivalent of a crash."""


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    expected: tuple[type[BaseException], ...]  # what the parser documents it raises
    seeds: Callable[[], dict[str, bytes]]  # name -> input, written to corpus/<name>/ by run.py --seeds
    max_len: int = 4096  # libFuzzer -max_len: the largest input one call can meaningfully take
    what: str = ""


# ---- per-call timing: the targets wrap each call that parses attacker bytes


class _Clock:
    """Slowest single timed call of the current input, in ns. One global: targets are synchronous."""

    def __init__(self) -> None:
        self.slowest = 0
        self.calls = 0
        self._t0 = 0

    def reset(self) -> None:
        self.slowest = 0
        self.calls = 0

    def __enter__(self) -> _Clock:
        self._t0 = time.perf_counter_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        dt = time.perf_counter_ns() - self._t0
        self.calls += 1
        if dt > self.slowest:
            self.slowest = dt


CLOCK = _Clock()


def timed() -> _Clock:
    return CLOCK


# ---- outcome of one input


@dataclass
class Crash:
    signature: str
    count: int
    data: bytes
    trace: str


def _signature(exc: BaseException) -> str:
    """Type plus the innermost frame in nattrav (or the harness for a Violation): one bug, one name."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f for f in reversed(frames) if "/nattrav/" in f.filename), None)
    if where is None and frames:
        where = frames[-1]
    loc = f"{Path(where.filename).name}:{where.lineno}" if where else "?"
    head = str(exc).splitlines()[0][:80] if isinstance(exc, Violation) else ""
    return f"{type(exc).__name__} at {loc}" + (f": {head}" if head else "")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Runner:
    """Runs inputs through one target and keeps the numbers run.py and the CI slice report."""

    target: Target
    keep_slowest: int = 8
    inputs: int = 0
    busy_ns: int = 0
    expected_errors: int = 0
    timed_calls: int = 0  # parser calls made (an input may end before its first one)
    crash_count: int = 0
    crashes: dict[str, Crash] = field(default_factory=dict)
    slowest: list[tuple[int, bytes]] = field(default_factory=list)  # (ns, input), slowest first
    on_event: Callable[[str, object], None] | None = None  # ("crash", Crash) / ("slow", ns)

    def one(self, data: bytes) -> None:
        CLOCK.reset()
        rss0 = _rss_mb()
        t0 = time.perf_counter_ns()
        try:
            self.target.run(data)
        except self.target.expected:
            self.expected_errors += 1
        except Exception as exc:  # anything else breaks the parser's contract
            self._crash(exc, data)
        self.busy_ns += time.perf_counter_ns() - t0
        self.inputs += 1
        self.timed_calls += CLOCK.calls
        grew = _rss_mb() - rss0
        if grew > RSS_STEP_MB:
            try:
                raise Violation(f"one input raised the peak RSS by {grew:.0f} MB")
            except Violation as exc:
                self._crash(exc, data)
        ns = CLOCK.slowest
        if len(self.slowest) < self.keep_slowest or ns > self.slowest[-1][0]:
            self.slowest.append((ns, bytes(data)))
            self.slowest.sort(key=lambda x: -x[0])
            del self.slowest[self.keep_slowest:]
            if self.on_event is not None and ns == self.slowest[0][0]:
                self.on_event("slow", ns)

    def _crash(self, exc: BaseException, data: bytes) -> None:
        self.crash_count += 1
        sig = _signature(exc)
        known = self.crashes.get(sig)
        if known is not None:
            known.count += 1
            # keep the shortest reproducer
            if len(data) < len(known.data):
                known.data = bytes(data)
            return
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        crash = Crash(sig, 1, bytes(data), trace)
        self.crashes[sig] = crash
        if self.on_event is not None:
            self.on_event("crash", crash)

    @property
    def slowest_ns(self) -> int:
        return self.slowest[0][0] if self.slowest else 0


def retime(target: Target, data: bytes, repeat: int = 15) -> int:
    """The slowest timed call of `data`, as the least of `repeat` runs (noise on a shared machine
    only ever adds time): the number compared with the 1 ms budget."""
    best = None
    for _ in range(repeat):
        CLOCK.reset()
        try:
            target.run(data)
        except Exception:
            pass
        best = CLOCK.slowest if best is None else min(best, CLOCK.slowest)
    return best or 0


def crash_id(crash: Crash) -> str:
    return hashlib.sha1(crash.signature.encode()).hexdigest()[:10]


def save_crash(crash: Crash, directory: Path) -> Path:
    """The reproducer as crash-<id>.bin and what it does as crash-<id>.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"crash-{crash_id(crash)}.bin"
    path.write_bytes(crash.data)
    path.with_suffix(".txt").write_text(
        f"{crash.signature}\ninput ({len(crash.data)} bytes): {crash.data.hex()}\n\n{crash.trace}")
    return path


# ---- the corpus


def corpus_files(name: str, root: Path = CORPUS) -> list[Path]:
    """The seed/coverage inputs of a target (top level only: crashes/ and slow/ hold findings)."""
    d = root / name
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def finding_files(name: str, kind: str = "crashes", root: Path = CORPUS) -> list[Path]:
    d = root / name / kind
    return sorted(d.glob("*.bin")) if d.is_dir() else []


def write_seeds(target: Target, root: Path = CORPUS) -> list[Path]:
    d = root / target.name
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in target.seeds().items():
        p = d / f"seed-{name}"
        p.write_bytes(data)
        out.append(p)
    return out


# ---- deterministic mutation (the CI slice: no atheris, same inputs every run)

_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x20, 0x21, 0x12, 0xA4, 0x42, 0xC0, 0xC1, 0xDC, 0xDD, 0xDE, 0xDF)


def mutate(data: bytes, rng: random.Random, others: Iterable[bytes] = (), max_len: int = 4096) -> bytes:
    """One to four libFuzzer-style edits: bit flips, interesting bytes, inserts, erases, copies,
    big-endian integers at random offsets, splices with another corpus input."""
    b = bytearray(data)
    pool = list(others)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice(_INTERESTING)
        elif op == 2:
            i = rng.randint(0, len(b))
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and b:
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 16)]
        elif op == 4 and b:
            i, j = rng.randrange(len(b)), rng.randrange(len(b))
            n = rng.randint(1, 32)
            b[j:j] = b[i:i + n]
        elif op == 5 and len(b) >= 2:
            i = rng.randrange(len(b) - 1)
            width = rng.choice((1, 2, 4))
            v = rng.choice((0, 1, 2**(8 * width) - 1, 2**(8 * width - 1), rng.randrange(2**(8 * width))))
            b[i:i + width] = v.to_bytes(width, "big")
        elif op == 6 and pool:
            other = rng.choice(pool)
            cut = rng.randint(0, len(b))
            b = b[:cut] + other[rng.randint(0, len(other)):]
        elif op == 7 and b:
            del b[rng.randint(0, len(b)):]
    return bytes(b[:max_len])


# ---- structured inputs: one input is a script of records


def records(data: bytes) -> list[tuple[int, bytes]]:
    """Split an input into (op, payload) records: op byte, 2-byte big-endian length, payload (the
    last one cut short by the end of the input). Stateful targets read their script this way."""
    out, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i + 1:i + 3], "big")
        out.append((data[i], data[i + 3:i + 3 + n]))
        i += 3 + n
    return out


def record(op: int, payload: bytes = b"") -> bytes:
    return bytes([op]) + len(payload).to_bytes(2, "big") + payload


def run_slice(target: Target, mutations: int, seed: int = 14) -> Runner:
    """The CI slice of one target: every corpus input, then `mutations` mutants of them."""
    r = Runner(target)
    inputs = [p.read_bytes() for p in corpus_files(target.name)] or list(target.seeds().values())
    for data in inputs:
        r.one(data)
    rng = random.Random(seed)
    for _ in range(mutations):
        r.one(mutate(rng.choice(inputs), rng, inputs, target.max_len))
    return r
