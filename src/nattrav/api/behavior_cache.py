"""The NAT behaviour measured on a network, kept between runs: a warm connect learns its public
address with one STUN binding, finds the behaviour here and skips the RFC 5780 tests.

A network is named by what this host sees of it: the local address the kernel sends from towards the
STUN server, the public address that server saw, and the server itself (the behaviour is what that
server measured, its OTHER-ADDRESS included). A NAT's behaviour does not change between sessions,
its mappings do: the punch socket's mappings are always sampled fresh. Beside an entry's behaviour,
the public addresses its network's flows showed when there were several ("pool": an address pool,
which a warm connect's own 3 flows may miss; api/pool_survey.needs_survey).

The same file keeps our own recent bursts per local address ("flows": {ip: [[until, flows], ...]},
unix times): the flows a burst opened, held by the NATs until `until` (proto/planner/budget.py's
ledger), so that a later process publishes only the flow budget its NATs still have free. And
whether each rendezvous server we enrolled at granted a relay ("relay": {"ip:port": [saved, bool]}):
a connect may go out in the enroll's flight only where no relay grant is expected, because a grant
arrives in the enroll reply and its allocation must be in the connect (api/session.py).

One JSON file, $XDG_CACHE_HOME/nattrav/behavior.json (~/.cache when unset), mode 0600 in a 0700
directory, written whole to a temporary file and renamed. What it holds is our own earlier result,
not an authority: a file that is not ours (another owner, a symlink, writable by others), too big,
of another version, or malformed in any way is ignored, never an error; entries older than
MAX_AGE are ignored; at most MAX_ENTRIES are kept, the most recently saved.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..atomic import replace_file
from ..cache_doc import FILE_NAME, MAX_AGE, MAX_FILE, VERSION, default_path, read_doc  # noqa: F401 (re-exported)
from ..io.trace import MAX_TTL
from ..proto.hops import HopReading, filled, read_trace
from ..proto.nat_behavior import NatBehavior
from ..proto.port_block import MIN_BLOCK
from ..proto.planner.budget import FLOW_TABLE_CAP

MAX_ENTRIES = 32
REFRESH_AFTER = 600.0  # seconds after which a connect that used an entry measures again, after connecting
MAX_BURSTS = 64  # bursts kept per local address (older ones expired long ago or are dropped first)
MAX_SERVERS = 16  # rendezvous servers whose relay grant is remembered (the most recently enrolled)
MAX_POOL_IPS = 16  # public addresses of a pool kept per entry (two already call for a pool survey)

# what an entry keeps of a NatBehavior: the words and the server's addresses, not the raw samples
_KEPT = ("mapping", "filtering", "allocation", "delta", "hairpin", "lifetime", "nat", "classic",
         "public_ip", "local", "server", "other_address", "findings")

Address = tuple[str, int]


@dataclass(frozen=True)
class Key:
    """What names a network: local IP, public IP, STUN server (ip, port)."""

    local_ip: str
    public_ip: str
    stun: Address

    @classmethod
    def of(cls, local: Address | str, public: Address | str, stun: Address) -> Key:
        def ip(a: Address | str) -> str:
            return str(ipaddress.ip_address(a if isinstance(a, str) else a[0]))

        return cls(ip(local), ip(public), (ip(stun[0]), int(stun[1])))

    def text(self) -> str:
        return f"{self.local_ip}|{self.public_ip}|{self.stun[0]}:{self.stun[1]}"


@dataclass(frozen=True)
class Entry:
    behavior: NatBehavior
    saved: float  # unix time
    # the hop trace towards the server measured on this network (trace_of()'s form), if kept: a warm
    # connect then needs no trace of its own
    trace: dict[str, Any] | None = None
    # the port block the NAT's counter was seen to go round (proto/port_block.py): lowest and highest
    # port, wraps seen. Kept so that each new process (every nattrav-fast run) need not see a wrap
    # of its own before its report names the block.
    block: tuple[int, int, int] | None = None
    tcp_block: tuple[int, int, int] | None = None  # its TCP counter's (a NAT counts each protocol apart)

    def blocks(self) -> dict[str, tuple[int, int, int]]:
        """The kept blocks by protocol (api/port_blocks.py's words)."""
        return {proto: b for proto, name in _BLOCK_FIELDS.items() if (b := getattr(self, name)) is not None}

    def hops(self) -> HopReading | None:
        """The kept trace read again (proto/hops.read_trace), or None."""
        if self.trace is None:
            return None
        answers = {int(t): ip for t, ip in self.trace["answers"].items()}
        return read_trace(answers, self.trace["server_ttl"], MAX_TTL)

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.saved


class BehaviorCache:
    """The cache file at `path` (default: default_path()). Every method swallows the file's
    problems: a cache that cannot be read is empty, one that cannot be written stays as it was."""

    def __init__(self, path: str | os.PathLike | None = None, *, max_age: float = MAX_AGE,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.max_age = max_age
        self.max_entries = max_entries

    def lookup(self, key: Key, now: float | None = None) -> Entry | None:
        """The entry for `key` if one is there and younger than max_age."""
        now = time.time() if now is None else now
        raw = self._read().get(key.text())
        if raw is None:
            return None
        entry = _entry_from(raw)
        if entry is None or not 0 <= now - entry.saved <= self.max_age:
            return None
        return entry

    def guess(self, local_ip: str, stun: Address, now: float | None = None) -> tuple[Key, Entry] | None:
        """The most recently saved valid entry measured from `local_ip` against `stun`, whatever the
        public address it was seen from: what a warm connect may sample with before the public
        address that names the network is known. Only a guess: the caller confirms it with
        `confirmed()` once its samples showed the public address."""
        now = time.time() if now is None else now
        try:
            probe = Key.of(local_ip, local_ip, stun)
        except ValueError:
            return None
        head, tail = f"{probe.local_ip}|", f"|{probe.stun[0]}:{probe.stun[1]}"
        best: tuple[Key, Entry] | None = None
        for text, raw in self._read().items():  # oldest first: the last match is the newest
            if not (text.startswith(head) and text.endswith(tail)):
                continue
            entry = _entry_from(raw)
            if entry is None or not 0 <= now - entry.saved <= self.max_age:
                continue
            public = text[len(head):len(text) - len(tail)]
            try:
                best = (Key.of(probe.local_ip, public, probe.stun), entry)
            except ValueError:
                continue
        return best

    def save(self, key: Key, behavior: NatBehavior, now: float | None = None) -> bool:
        """Store `behavior` for `key` (only a complete measurement: mapping and filtering known);
        True when the file was written."""
        if behavior.public_ip is None or behavior.mapping is None or behavior.filtering is None:
            return False
        entries, flows, relay = self._load()
        old = entries.pop(key.text(), None)
        known = _entry_from(old) if old is not None else None
        if behavior.lifetime is None and known is not None and known.behavior.lifetime is not None:
            # discovery does not measure the mapping lifetime (io/lifetime.py does, once a session is
            # up): a new measurement of the same network keeps the one measured before
            behavior = replace(behavior, lifetime=known.behavior.lifetime)
        if known is not None and known.behavior.pool_ips:
            # a pool the network showed before stays shown: a new measurement's flows may all have
            # left from one of its addresses
            behavior = replace(behavior, pool_ips=sorted(set(known.behavior.pool_ips) | behavior.mapped_ips()))
        # and the hop trace, which discovery does not take either (the endpoint adds it: set_hops)
        saved = time.time() if now is None else now
        entries[key.text()] = _entry_to(Entry(behavior, saved) if known is None
                                        else replace(known, behavior=behavior, saved=saved))
        return self._write(entries, flows, relay)

    def set_lifetime(self, key: Key, lifetime: float) -> bool:
        """Add a measured mapping lifetime (seconds) to `key`'s entry, which keeps its age (the rest
        was not measured again); True when the file was written."""
        if not _lifetime_ok(lifetime):
            return False
        entries, flows, relay = self._load()
        raw = entries.get(key.text())
        entry = _entry_from(raw) if raw is not None else None
        if entry is None:
            return False
        behavior = replace(entry.behavior, lifetime=float(lifetime))
        entries[key.text()] = _entry_to(replace(entry, behavior=behavior))
        return self._write(entries, flows, relay)

    def set_hops(self, key: Key, reading: HopReading) -> bool:
        """Keep a measured hop trace with `key`'s entry (which keeps its age); True when written."""
        if trace_of(reading) is None:
            return False
        entries, flows, relay = self._load()
        raw = entries.get(key.text())
        entry = _entry_from(raw) if raw is not None else None
        if entry is None:
            return False
        old = entry.hops()
        if old is not None and old.server_ttl == reading.server_ttl:
            # the same path: the hops a background refresh lost to rate-limited ICMP (hops.filled; one
            # that lost our CGN's made every later warm connect open a TTL short and wait ~0.4 s)
            reading = filled(reading, old, MAX_TTL)
        trace = trace_of(reading)
        if entry.trace == trace:
            return False
        entries[key.text()] = _entry_to(replace(entry, trace=trace))
        return self._write(entries, flows, relay)

    def add_pool(self, key: Key, ips: set[str]) -> bool:
        """Keep public addresses an endpoint's own flows showed (its punch socket's, its pool survey's)
        with `key`'s entry, which keeps its age: an entry whose measurement saw one address (or an
        older version's, which kept none) learns of the pool once any connect saw it. True when
        written (only when the entry's addresses grew into a pool)."""
        entries, flows, relay = self._load()
        raw = entries.get(key.text())
        entry = _entry_from(raw) if raw is not None else None
        if entry is None:
            return False
        old = entry.behavior.mapped_ips()
        pool = old | set(ips)
        if len(pool) < 2 or pool == old or len(old) >= MAX_POOL_IPS:  # full: two already call for a survey
            return False
        behavior = replace(entry.behavior, pool_ips=sorted(pool))
        entries[key.text()] = _entry_to(replace(entry, behavior=behavior))
        return self._write(entries, flows, relay)

    def set_block(self, key: Key, block: tuple[int, int, int], proto: str = "udp") -> bool:
        """Keep the port block (lowest, highest port, wraps seen) of `proto`'s counter ("udp" or
        "tcp") with `key`'s entry, which keeps its age; True when written (only when it changed)."""
        if not _block_ok(list(block)) or proto not in _BLOCK_FIELDS:
            return False
        entries, flows, relay = self._load()
        raw = entries.get(key.text())
        entry = _entry_from(raw) if raw is not None else None
        if entry is None or entry.blocks().get(proto) == tuple(block):
            return False
        entries[key.text()] = _entry_to(replace(entry, **{_BLOCK_FIELDS[proto]: tuple(block)}))
        return self._write(entries, flows, relay)

    def forget(self, key: Key) -> bool:
        """Drop `key`'s entry (the behaviour it named did not hold); True when the file was written."""
        entries, flows, relay = self._load()
        if entries.pop(key.text(), None) is None:
            return False
        return self._write(entries, flows, relay)

    def flows_held(self, local_ip: str, now: float | None = None) -> int:
        """Flows our bursts from `local_ip` opened that the NATs may still hold at `now` (unix time)."""
        return sum(n for _, n in self.bursts(local_ip, now))

    def bursts(self, local_ip: str, now: float | None = None) -> list[tuple[float, int]]:
        """(until, flows) of our bursts from `local_ip` that the NATs may still hold at `now` (unix time)."""
        now = time.time() if now is None else now
        return [(until, n) for until, n in self._load()[1].get(local_ip, ()) if until > now]

    def record_flows(self, local_ip: str, flows: int, until: float, now: float | None = None) -> bool:
        """A burst from `local_ip` whose NAT entries last until `until` (unix time); True when written."""
        now = time.time() if now is None else now
        entries, held, relay = self._load()
        bursts = [b for b in held.get(local_ip, ()) if b[0] > now] + [[float(until), int(flows)]]
        held = {ip: [b for b in v if b[0] > now] for ip, v in held.items()}
        held[local_ip] = bursts[-MAX_BURSTS:]
        return self._write(entries, {ip: v for ip, v in held.items() if v}, relay)

    def relay_granted(self, server: Address, now: float | None = None) -> bool | None:
        """Whether the rendezvous server `server` granted us a relay when we last enrolled there
        (within max_age); None when not known."""
        now = time.time() if now is None else now
        seen = self._load()[2].get(_server_text(server))
        if seen is None or not 0 <= now - seen[0] <= self.max_age:
            return None
        return seen[1]

    def note_relay(self, server: Address, granted: bool, now: float | None = None) -> bool:
        """Remember whether `server`'s enroll reply carried a relay grant; True when written (only
        when the answer changed or is getting old: an unchanged fresh one costs no write)."""
        now = time.time() if now is None else now
        text = _server_text(server)
        entries, flows, relays = self._load()
        seen = relays.get(text)
        if seen is not None and seen[1] == granted and 0 <= now - seen[0] <= self.max_age / 2:
            return False
        relays.pop(text, None)
        relays[text] = [now, bool(granted)]
        return self._write(entries, flows, dict(list(relays.items())[-MAX_SERVERS:]))

    # -- the file --
    def _read(self) -> dict[str, Any]:
        return self._load()[0]

    def _load(self) -> tuple[dict[str, Any], dict[str, list[list]], dict[str, list]]:
        """The file's entries by key text, oldest first, its bursts by local address and the relay
        grants by server; empty for anything but our own valid file (bursts that are not
        [until, flows], grants that are not [saved, bool], are dropped)."""
        doc = self._doc()
        if not doc:
            return {}, {}, {}
        entries = {k: v for k, v in doc["entries"].items() if isinstance(k, str) and isinstance(v, dict)}
        return (dict(sorted(entries.items(), key=lambda kv: _saved(kv[1]))), _bursts(doc.get("flows")),
                _relays(doc.get("relay")))

    def _doc(self) -> dict[str, Any]:
        """The file's document when it is our own valid file, else {}."""
        return read_doc(self.path)

    def _write(self, entries: dict[str, Any], flows: dict[str, list[list]], relay: dict[str, list]) -> bool:
        items = sorted(entries.items(), key=lambda kv: _saved(kv[1]))[-self.max_entries:]

        def dump() -> bytes:
            doc = {"version": VERSION, "entries": dict(items), "flows": flows, "relay": relay}
            return json.dumps(doc, separators=(",", ":")).encode()

        data = dump()
        while len(data) > MAX_FILE and items:  # the oldest go first
            items = items[1:]
            data = dump()
        if len(data) > MAX_FILE:
            flows = {}
            data = dump()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_file(self.path, data, mode=0o600)
            return True
        except OSError:
            return False


def _server_text(server: Address) -> str:
    return f"{server[0]}:{int(server[1])}"


def _relays(raw: Any) -> dict[str, list]:
    """The file's relay grants, each checked: {"host:port": [saved, granted]}, oldest first."""
    if not isinstance(raw, dict):
        return {}
    out = {k: [float(v[0]), v[1]] for k, v in raw.items()
           if isinstance(k, str) and len(k) <= 300 and isinstance(v, list) and len(v) == 2
           and type(v[0]) in (int, float) and math.isfinite(v[0]) and type(v[1]) is bool}
    return dict(sorted(out.items(), key=lambda kv: kv[1][0])[-MAX_SERVERS:])


def _bursts(raw: Any) -> dict[str, list[list]]:
    """The file's bursts, each checked: an IP literal's list of [until, flows]."""
    out: dict[str, list[list]] = {}
    if not isinstance(raw, dict):
        return out
    for ip, bursts in raw.items():
        try:
            ipaddress.ip_address(ip)
        except (TypeError, ValueError):
            continue
        if not isinstance(bursts, list):
            continue
        ok = [[float(b[0]), b[1]] for b in bursts[-MAX_BURSTS:]
              if isinstance(b, list) and len(b) == 2 and type(b[1]) is int and 0 <= b[1] <= FLOW_TABLE_CAP
              and type(b[0]) in (int, float) and math.isfinite(b[0])]
        if ok:
            out[ip] = ok
    return out


def _saved(raw: Any) -> float:
    saved = raw.get("saved") if isinstance(raw, dict) else None
    return float(saved) if isinstance(saved, (int, float)) and saved == saved else 0.0


def _entry_to(entry: Entry) -> dict[str, Any]:
    behavior = entry.behavior
    d = behavior.to_dict()
    out: dict[str, Any] = {"saved": entry.saved, "behavior": {k: d[k] for k in _KEPT}}
    if entry.trace is not None:
        out["trace"] = entry.trace
    for proto, block in entry.blocks().items():
        out[_BLOCK_KEYS[proto]] = list(block)  # beside the behaviour: an older reader ignores it
    pool = sorted(behavior.mapped_ips())
    if len(pool) > 1:
        # the raw samples are not kept, but what they said about an address pool is: a warm connect
        # runs no discovery, and its punch socket's 3 flows alone miss a pool of 4 one time in 16
        # (api/pool_survey.needs_survey). Beside the behaviour: an older reader ignores it.
        out["pool"] = pool[:MAX_POOL_IPS]
    return out


def trace_of(reading: HopReading) -> dict[str, Any] | None:
    """What the file keeps of a hop trace: the hops that answered and the TTL that reached the
    server; None for a trace that showed nothing usable (the next connect traces again)."""
    if not reading.measured:
        return None
    return {"answers": {str(t): ip for t, ip in reading.hops if ip is not None}, "server_ttl": reading.server_ttl}


def _trace_ok(raw: Any) -> bool:
    if not isinstance(raw, dict) or set(raw) != {"answers", "server_ttl"}:
        return False
    answers, server_ttl = raw["answers"], raw["server_ttl"]
    if not (server_ttl is None or (type(server_ttl) is int and 1 <= server_ttl <= MAX_TTL + 1)):
        return False
    if not isinstance(answers, dict) or len(answers) > MAX_TTL:
        return False
    for ttl, ip in answers.items():
        if not (isinstance(ttl, str) and ttl.isdigit() and 1 <= int(ttl) <= MAX_TTL and isinstance(ip, str)):
            return False
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return False
    return True


def _entry_from(raw: dict[str, Any]) -> Entry | None:
    """An entry read back, every field checked; None when anything is off."""
    saved = raw.get("saved")
    b = raw.get("behavior")
    if not isinstance(saved, (int, float)) or isinstance(saved, bool) or not isinstance(b, dict):
        return None
    trace = raw.get("trace")
    if trace is not None and not _trace_ok(trace):
        return None
    pool = raw.get("pool", [])
    if not _pool_ok(pool):
        return None
    blocks = {proto: raw.get(k) for proto, k in _BLOCK_KEYS.items()}
    if any(b is not None and not _block_ok(b) for b in blocks.values()):
        return None
    if set(b) - set(_KEPT):
        return None
    try:
        behavior = NatBehavior.from_dict(b)
        for addr in (behavior.local, behavior.server, behavior.other_address):
            if addr is not None:
                ipaddress.ip_address(addr[0])
                if not 0 <= addr[1] <= 65535:
                    return None
        if behavior.public_ip is not None:
            ipaddress.ip_address(behavior.public_ip)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    if behavior.mapping is None or behavior.filtering is None or behavior.server is None:
        return None
    if not (behavior.delta is None or (type(behavior.delta) is int and abs(behavior.delta) <= 65535)):
        return None
    if not isinstance(behavior.classic, str) or not all(isinstance(f, str) for f in behavior.findings):
        return None
    for flag in (behavior.hairpin, behavior.nat):
        if flag is not None and not isinstance(flag, bool):
            return None
    if behavior.lifetime is not None and not _lifetime_ok(behavior.lifetime):
        return None
    behavior.pool_ips = list(pool)
    return Entry(behavior, float(saved), trace,
                 **{_BLOCK_FIELDS[proto]: (b[0], b[1], b[2]) for proto, b in blocks.items() if b is not None})


# where each protocol's port block lives: in Entry, and in the file
_BLOCK_FIELDS = {"udp": "block", "tcp": "tcp_block"}
_BLOCK_KEYS = {"udp": "port_block", "tcp": "tcp_port_block"}


def _block_ok(raw: Any) -> bool:
    """[lowest, highest, wraps]: ports in 1..65535 at least MIN_BLOCK apart, wraps a count."""
    if not (isinstance(raw, list) and len(raw) == 3 and all(type(v) is int for v in raw)):
        return False
    lo, hi, wraps = raw
    return 1 <= lo and lo + MIN_BLOCK - 1 <= hi <= 65535 and 0 <= wraps <= 10**9


def _pool_ok(raw: Any) -> bool:
    if not isinstance(raw, list) or len(raw) > MAX_POOL_IPS or not all(isinstance(ip, str) for ip in raw):
        return False
    try:
        for ip in raw:
            ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True


def confirmed(guessed: Entry, found: Entry | None, announced: Address | None, *, same_trace: bool = False) -> bool:
    """Whether samples taken on the strength of `guessed` (towards its server and the OTHER-ADDRESS
    it names) may stand for the entry `found` under the key the samples' public address names:
    there is one, it names the same second server address, and the server still announces that
    address (`announced`: the OTHER-ADDRESS of its answer, None when it named none). Anything else
    is another network or a changed server: measure again. `same_trace`: the guess's hop trace stood
    in for one of ours, so the found entry must keep the same."""
    if found is None or (same_trace and found.trace != guessed.trace):
        return False
    other = _addr_or_none(found.behavior.other_address)
    return other == _addr_or_none(guessed.behavior.other_address) and other == _addr_or_none(announced)


def _addr_or_none(addr: Any) -> Address | None:
    if addr is None:
        return None
    try:
        return (str(ipaddress.ip_address(addr[0])), int(addr[1]))
    except (TypeError, ValueError, IndexError):
        return None


MAX_LIFETIME = 24 * 3600.0  # seconds; a mapping lifetime beyond a day is not a measurement


def _lifetime_ok(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 < value <= MAX_LIFETIME)


__all__ = ["MAX_AGE", "MAX_ENTRIES", "MAX_FILE", "REFRESH_AFTER", "BehaviorCache", "Entry", "Key", "confirmed",
           "default_path", "trace_of"]
