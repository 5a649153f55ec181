"""One side of an experiment trial, run inside a lab host by experiment/trial.py.

Like the matrix agent (lab/agent.py) it is given only what a user could type: the server, a name, the
session options a user may set (TTL, flow budget, planner odds, sockets, workers) and, if asked, a
traffic measurement to run over the path once it is up. One JSON line on stdout per trial.

    python -m nattrav.experiment.agent --role connect --server 198.51.100.1:7000 --name e1 \
        --options '{"max_flows": 256}' --traffic '{"rate": "20M", "time": 2}'
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trio

from ..lab.agent import FAILURES, connected, failure_reason, marking, note_plan

USER_OPTIONS = {"ttl", "max_flows", "target", "horizon", "max_sockets", "birthday_sockets", "max_window",
                "best_effort_flows", "workers"}
TRAFFIC_KEYS = {"rate", "size", "time", "interval", "tcp", "raw", "frames", "sockbuf"}


def _emit(d: dict[str, Any]) -> None:
    print(json.dumps(d, default=str), flush=True)


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    bad = set(options) - USER_OPTIONS
    if bad:
        raise ValueError(f"not a session option a user could set: {sorted(bad)}")
    return {k: v for k, v in options.items() if v is not None}


async def _traffic(path: Any, spec: dict[str, Any], role: str) -> dict[str, Any]:
    from . import measure, traffic

    if spec.get("tcp"):
        if role == "connect":
            return await traffic.run_tcp_sender(path, duration=float(spec.get("time", 2)))
        return {"receiver": await traffic.serve_tcp_receiver(path, interval=float(spec.get("interval", 1)))}
    # raw: plain datagrams over the punched socket and the peer's mapping (the same hops and NAT
    # mappings, without the path's framing): what nattrav's own DATA frames cost, measured apart
    # frames "python": the path's frames built and checked one at a time in Python (the baseline of
    # the batch path in csrc/frames.c); sockbuf: the sockets' kernel buffers (0: the kernel's default)
    if spec.get("raw"):
        ch = traffic.RawChannel(path.sock, path.peer_addr)
    else:
        ch = traffic.PyFramesChannel(path) if spec.get("frames") == "python" else traffic.PathChannel(path)
    sockbuf = int(spec.get("sockbuf", traffic.SOCKBUF))
    if role == "connect":
        return await traffic.run_udp_sender(ch, rate_bps=measure.parse_rate(spec.get("rate", "10M")),
                                            size=int(spec.get("size", 1200)), duration=float(spec.get("time", 2)),
                                            sockbuf=sockbuf)
    return {"receiver": await traffic.serve_udp_receiver(ch, interval=float(spec.get("interval", 1)), timeout=30,
                                                         sockbuf=sockbuf)}


async def run_agent(args: argparse.Namespace) -> None:
    from .. import api
    from ..errors import UnknownPeer
    from ..hostport import parse_hostport

    options = check_options(json.loads(args.options))
    spec = json.loads(args.traffic) if args.traffic else None
    if spec is not None and set(spec) - TRAFFIC_KEYS:
        raise SystemExit(f"unknown traffic keys: {sorted(set(spec) - TRAFFIC_KEYS)}")
    tcp = bool(spec and spec.get("tcp")) or args.transport == "tcp"
    connect, listen = (api.connect_tcp, api.listen_tcp) if tcp else (api.connect, api.listen)
    server = parse_hostport(args.server, 7000)
    marks, on_event = marking()

    row: dict[str, Any] = {"event": "trial", "role": args.role, "ok": False}

    async def use(path: Any) -> None:
        row.update(connected(path, marks))
        row["path"] = path.statistics() if hasattr(path, "statistics") else {"timings": getattr(path, "timings", {})}
        if spec is not None:
            row["traffic"] = await _traffic(path, spec, args.role)
            if hasattr(path, "statistics"):
                row["path"] = path.statistics()  # again: now with what the traffic moved
        row["ok"] = True

    try:
        with trio.fail_after(args.timeout):
            if args.role == "listen":
                async with listen(server, name=args.name, cache=False, on_event=on_event, secure=False,
                                  **options) as lst:
                    _emit({"event": "ready"})
                    async with lst.accept() as path:
                        await use(path)
            else:
                while True:
                    try:
                        async with connect(server, args.name, cache=False, on_event=on_event, secure=False,
                                           timeout=args.timeout, **options) as path:
                            await use(path)
                        break
                    except UnknownPeer:
                        await trio.sleep(0.05)  # the listener has not enrolled yet
    except FAILURES as exc:
        row["reason"] = failure_reason(exc, args.timeout)
    plan = note_plan(row, marks)
    row["plan"] = {k: plan.get("params", {}).get(k) for k in (
        "local_packets", "remote_packets", "local_sockets", "remote_sockets", "local_random_probes",
        "remote_random_probes", "local_flows", "remote_flows", "flow_budget")} if plan else None
    _emit(row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nattrav.experiment.agent", description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=("listen", "connect"), required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--options", default="{}", help="session options as JSON (what a user could set)")
    p.add_argument("--traffic", help="traffic to measure over the path, as JSON (rate, size, time, interval, tcp)")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp",
                   help="tcp: a punched TCP stream (connect_tcp/listen_tcp), also implied by a TCP traffic spec")
    trio.run(run_agent, p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
