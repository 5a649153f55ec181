"""The matrix agent: one side of a connection trial, run inside a lab host by matrix.run_pair.

It is given only what a user would type — the rendezvous server and a name — and uses the product's
public API (nattrav.api) with its defaults: no TTL, no topology, nothing the lab knows. Behaviour
discovery runs once per agent (the product's own discovery; the NAT's behaviour is fixed, its mappings
are not and are sampled again every trial). One JSON line per trial on stdout.

    python -m nattrav.lab.agent --role listen --server 198.51.100.1:7000 --name m1 --trials 3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import trio

SERVER_PORT = 7000
ECHO_TRIES, ECHO_WAIT = 10, 0.5  # the listener's pings (datagrams get lost) and seconds to wait for each echo


def _emit(d: dict[str, Any]) -> None:
    print(json.dumps(d, default=str), flush=True)


async def run_agent(args: argparse.Namespace) -> None:
    from .. import api
    from ..api import discover_behavior
    from ..errors import ConnectError, UnknownPeer
    from ..hostport import parse_hostport

    connect, listen = (api.connect_tcp, api.listen_tcp) if args.tcp else (api.connect, api.listen)
    # a user's own option, passed on as typed (a baseline run's --flow-wait 0)
    knobs = {} if args.flow_wait is None else {"flow_wait": args.flow_wait}

    server = parse_hostport(args.server, SERVER_PORT)
    try:
        behavior = await discover_behavior((server[0], 3478))
        _emit({"event": "behavior", **{k: behavior.to_dict()[k] for k in
                                       ("mapping", "filtering", "allocation", "delta", "classic")}})
    except ConnectError as exc:
        # what a user would meet too: every connect then runs its own discovery
        behavior = None
        _emit({"event": "behavior", "error": str(exc)})
    for i in range(args.trials):
        marks, on_event = marking()

        row: dict[str, Any] = {"event": "trial", "trial": i, "ok": False}
        name = f"{args.name}-{i}"
        try:
            with trio.fail_after(args.trial_timeout + (args.wait if args.role == "listen" else 0.0)):
                if args.role == "listen":
                    # the raw punched path: the matrix measures traversal, not QUIC/TLS
                    async with listen(server, name=name, behavior=behavior, on_event=on_event,
                                      secure=False, **knobs) as lst:
                        _emit({"event": "ready", "trial": i})
                        # an application slow to call accept(): the offer waits in the client meanwhile
                        await trio.sleep(args.accept_delay)
                        async with lst.accept() as path:
                            path = LineStream(path) if args.tcp else path
                            row.update(connected(path, marks))
                            row["echo"] = await _ping(path, b"ping %d" % i, tries=1 if args.tcp else ECHO_TRIES)
                else:
                    while True:
                        try:
                            async with connect(server, name, behavior=behavior, on_event=on_event,
                                               timeout=args.trial_timeout, secure=False, **knobs) as path:
                                path = LineStream(path) if args.tcp else path
                                row.update(connected(path, marks))
                                got = await path.receive()
                                await path.send(got)
                                row["echo"] = got.decode(errors="replace")
                                if not args.tcp:
                                    await _echo_repeats(path)
                            break
                        except UnknownPeer:
                            await trio.sleep(0.05)  # the listener has not enrolled this trial yet
            row["ok"] = row.get("echo") == f"ping {i}"
        except FAILURES as exc:
            row["reason"] = failure_reason(exc, args.trial_timeout)
        plan = note_plan(row, marks)
        row.setdefault("plan_reason", plan.get("reason"))
        row["diag"] = diagnosis(marks)
        row["flow_wait"] = marks.get("flow_wait", 0.0)
        row["crossings"] = marks.get("crossings", 0)
        _emit(row)
        await trio.sleep(0.2)  # lets the peer read its close before the next trial
        if i + 1 < args.trials:
            await trio.sleep(args.gap)


async def _echo_repeats(path: Any) -> None:
    """An echo may be lost on the way back: answer the listener's repeated pings until it closes the
    path (b"") or stays quiet for a few of its retry periods (its close may be lost too), so a retry
    meets an echo, not our close."""
    while True:
        with trio.move_on_after(4 * ECHO_WAIT):
            again = await path.receive()
            if not again:
                return
            await path.send(again)
            continue
        return


async def _ping(path: Any, ping: bytes, *, tries: int) -> str | None:
    """Send `ping` until it comes back (`tries` times at most, ECHO_WAIT apart); what came back."""
    for attempt in range(tries):
        await path.send(ping)
        with trio.move_on_after(ECHO_WAIT if attempt + 1 < tries else math.inf):
            return (await path.receive()).decode(errors="replace")
    return None


def marking() -> tuple[dict[str, Any], Any]:
    """An on_event hook that keeps what a trial's row needs: the agreed start and the plan."""
    marks: dict[str, Any] = {"events": []}
    t_first: list[float] = []

    def on_event(phase: str, d: dict[str, Any]) -> None:
        # a failed trial's evidence (diagnosis(), in the row): when each step came, ms from the first
        now = trio.current_time()
        t_first[:1] = t_first[:1] or [now]
        if len(marks["events"]) < MAX_EVENTS and phase in TIMED:
            marks["events"].append([phase, round((now - t_first[0]) * 1e3, 1), _brief(phase, d)])
        if phase == "punch":
            # from the first round's agreed start: a second round's time is the connect's too
            marks.setdefault("start", trio.current_time() + d["start_in"])
        elif phase == "relay":  # straight to the relay: the time counts from there
            marks.setdefault("start", trio.current_time())
        elif phase == "plan":
            marks["plan"] = d
            marks.setdefault("first_plan", d)  # the connect's stated odds (a second round plans again)
        elif phase == "again":
            marks["again"] = marks.get("again", 0) + 1
        elif phase == "block-top":  # a counter taken through its block's top (api/block_edge.py)
            marks["crossings"] = marks.get("crossings", 0) + 1
        elif phase == "flow-wait":  # seconds spent waiting for our own bursts' entries (api/flow_wait.py)
            marks["flow_wait"] = round(marks.get("flow_wait", 0.0) + float(d.get("seconds", 0.0)), 3)

    return marks, on_event


# the phases a trial's timeline keeps (what moves a sequential NAT's counter, and the punch's steps)
TIMED = {"again", "again-found", "block-top", "counter", "flow-wait", "hops", "mapping", "observed", "pool-survey",
         "rendezvous", "rendezvous-connect", "enrolled", "offer", "beacon", "resample", "plan", "rung", "tcp-mapping",
         "tcp-port-block", "punch", "attempt", "ttl", "burst", "hello", "established", "connected"}
MAX_EVENTS = 64


def _brief(phase: str, d: dict[str, Any]) -> Any:
    """The part of an event's details a diagnosis needs (a plan's targets would swamp the row)."""
    if phase in ("plan", "rung"):  # a TCP ladder's later rung aims anew
        targets = d.get("peer_targets") or []
        return {"targets": len(targets), "first": targets[:3], "last": targets[-1:],
                **{k: d[k] for k in ("blocks", "sides") if d.get(k)}}
    if phase in ("mapping", "punch", "ttl", "attempt", "hello", "observed", "again", "again-found", "block-top",
                 "counter", "tcp-mapping", "tcp-port-block"):
        return {k: v for k, v in d.items() if k in ("ports", "public", "beacon", "survey", "start_in", "timeout",
                                                    "range",
                                                    "ttl", "strategy", "targets", "peer", "udp", "opens", "odds",
                                                    "found", "flows", "wrapped")}
    if phase == "pool-survey":  # which flows showed the pool first (the punch socket's, discovery's)
        return {k: d.get(k) for k in ("addresses", "flows", "discovery")}
    return None


def diagnosis(marks: dict[str, Any]) -> dict[str, Any]:
    """The trial's timeline and the plan's own words about both sides (lab evidence, never fed back)."""
    plan = marks.get("plan") or {}
    return {"events": marks.get("events", []),
            "params": {k: (plan.get("params") or {}).get(k) for k in
                       ("local_targets", "local_packets", "remote_packets", "local_opens", "flow_budget",
                        "remote_flow_budget", "horizons")}}


def _failures() -> tuple[type[BaseException], ...]:
    from ..errors import ConnectError, RendezvousError

    return (ConnectError, trio.TooSlowError, RendezvousError, OSError)


FAILURES = _failures()  # what ends a trial as a failure with a reason (anything else is a crash)


def failure_reason(exc: BaseException, timeout: float) -> str:
    """A failed trial's reason, in its row."""
    from ..errors import ConnectError

    if isinstance(exc, ConnectError):
        return str(exc)
    if isinstance(exc, trio.TooSlowError):
        return f"trial timed out after {timeout:g} s"
    return f"{type(exc).__name__}: {exc}"


def note_plan(row: dict[str, Any], marks: dict[str, Any]) -> dict[str, Any]:
    """The plan's strategy and odds into the row (the plan event's details, or {}, returned)."""
    plan = marks.get("plan") or {}
    first = marks.get("first_plan") or plan
    row["strategy"] = row.get("strategy") or plan.get("strategy")
    # the odds the connect stated first: a trial that needed a second round is judged against them
    row["odds"] = first.get("odds")
    row["odds_floor"] = bool(first.get("odds_floor"))
    row["again"] = marks.get("again", 0)
    return plan


class LineStream:
    """The TCP matrix's view of a punched stream: the send()/receive() of a UDP path, one message a
    line (a stream has no datagram boundaries)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self._buf = stream, b""
        self.strategy, self.rtt, self.peer_addr = stream.strategy, stream.rtt, stream.peer_addr

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data + b"\n")

    async def receive(self) -> bytes:
        while b"\n" not in self._buf:
            chunk = await self.stream.receive_some(4096)
            if not chunk:
                raise OSError("the peer closed the TCP stream")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line


def connected(path: Any, marks: dict[str, Any]) -> dict[str, Any]:
    start = marks.get("start")
    # a relayed path's address is the relay's: no prediction to check against it
    targets = [] if path.strategy.value == "relay" else (marks.get("plan") or {}).get("peer_targets") or []
    return {
        "strategy": path.strategy.value,
        "rtt_ms": round(path.rtt * 1e3, 3),
        "seconds": None if start is None else round(max(0.0, trio.current_time() - start), 4),
        # ground truth: the port the peer's NAT really used for this flow, seen on the wire
        "peer_port": path.peer_addr[1],
        "predicted": bool(targets),
        "prediction_hit": path.peer_addr[1] in targets if targets else None,
        "prediction_rank": targets.index(path.peer_addr[1]) if path.peer_addr[1] in targets else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nattrav.lab.agent", description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=("listen", "connect"), required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--trial-timeout", type=float, default=20.0)
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="a listener waits this much longer for its peer than a trial may take (default 0)")
    p.add_argument("--tcp", action="store_true", help="TCP traversal (connect_tcp/listen_tcp)")
    p.add_argument("--accept-delay", type=float, default=0.0, metavar="S",
                   help="a listener calls accept() this long after it enrolled (a late listener: the "
                        "initiator's offer waits; default 0)")
    p.add_argument("--gap", type=float, default=0.0, metavar="S",
                   help="seconds between trials (default 0: back to back). A burst's NAT entries linger "
                        "(planner/budget.FLOW_LINGER), so back-to-back birthdays publish what is left of "
                        "the flow budget; a gap past the linger gives every trial a fresh one")
    p.add_argument("--flow-wait", type=float, default=None, metavar="S",
                   help="nattrav-fast's --flow-wait, passed to connect()/listen() (default: theirs)")
    trio.run(run_agent, p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
