"""An experiment that embeds nattrav: how do the flow budget and background traffic on the NATs change
time-to-connect and goodput over a punched UDP path?

It sweeps two parameters (the session option `max_flows` and the lab's background traffic) over a NAT
pair in the NAT lab. Each trial runs this file's own `peer` in the lab's two hosts: a few lines that
call nattrav.listen()/nattrav.connect() with the trial's options, measure UDP goodput over the path
(nattrav.experiment.traffic) and print one JSON line. The driver records one JSON line per trial
(resumable: rerun it and recorded trials are skipped) and draws the plots from those lines.

    sudo .venv/bin/python examples/experiment.py --out-dir /tmp/exp          # the full sweep
    sudo .venv/bin/python examples/experiment.py --out-dir /tmp/exp --small  # 4 trials (the lab test)

Needs root (the NAT lab) and the experiment extra (pip install -e '.[experiment]').
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

import nattrav
from nattrav.experiment import plots, traffic
from nattrav.experiment.runner import run_sweep
from nattrav.experiment.trial import run_hosts

SWEEP = {
    "name": "flows-x-background",
    "repeats": 3,
    "seed": 17,
    "axes": {"pair": [["symmetric-seq", "port-restricted"]], "max_flows": [32, 128, 1024], "background": [0, 20, 100]},
}
SMALL = {**SWEEP, "repeats": 1, "axes": {**SWEEP["axes"], "max_flows": [32, 1024], "background": [0, 50]}}
RATE_BPS = 10e6
SECONDS = 1.0


# --- the embedded part: one peer of one trial -------------------------------------------------------

async def peer(role: str, server: str, name: str, max_flows: int) -> None:
    """Connect (and send) or listen (and receive), with the trial's session options."""
    out: dict = {"event": "trial", "ok": False}
    try:
        with trio.fail_after(30):
            if role == "listen":
                async with nattrav.listen(server, name=name, max_flows=max_flows, cache=False) as lst:
                    async with lst.accept() as path:
                        out["traffic"] = {"receiver": await traffic.serve_udp_receiver(traffic.PathChannel(path))}
                        out["path"] = path.statistics()
            else:
                while True:
                    try:
                        async with nattrav.connect(server, name, max_flows=max_flows, cache=False) as path:
                            out["traffic"] = await traffic.run_udp_sender(
                                traffic.PathChannel(path), rate_bps=RATE_BPS, duration=SECONDS)
                            out["path"] = path.statistics()
                        break
                    except nattrav.UnknownPeer:
                        await trio.sleep(0.05)  # the listener is not enrolled yet
        out["ok"] = True
    except (nattrav.NattravError, trio.TooSlowError, OSError) as exc:
        out["reason"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out, default=str), flush=True)


# --- the driver: the sweep in the NAT lab --------------------------------------------------------------

def trial(lab, t, spec) -> dict:
    """Run this file's peer in hosts a (connects) and b (listens); join their lines into one result."""
    me = [sys.executable, str(Path(__file__).resolve()), "peer", "--server", f"{lab.S1}:7000",
          "--name", f"ex{t.key[:10]}", "--max-flows", str(t.options["max_flows"])]
    a, b, errors = run_hosts(lab, {"a": me + ["--role", "connect"], "b": me + ["--role", "listen"]}, 60)
    ok = bool(a.get("ok") and b.get("ok"))
    timings = ((a.get("path") or {}).get("timings") or {}).get("spans", {})
    # the punch as both sides saw it: from the plan firing (the agreed start's wait included) to the path
    punch = [((r.get("path") or {}).get("timings") or {}).get("spans", {}).get("punch") for r in (a, b)]
    rx = (a.get("traffic") or {}).get("receiver") or {}
    return {"ok": ok, "strategy": (a.get("path") or {}).get("strategy"), "seconds": max((x for x in punch if x is not None), default=None),
            "connect_total_s": timings.get("total"), "goodput_bps": rx.get("goodput_bps"), "loss": rx.get("loss"),
            "rtt_ms": (a.get("traffic") or {}).get("rtt_ms"), "reason": None if ok else (a.get("reason") or b.get("reason") or errors)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    pp = sub.add_parser("peer", help="(run by the driver inside a lab host)")
    pp.add_argument("--role", choices=("listen", "connect"), required=True)
    pp.add_argument("--server", required=True)
    pp.add_argument("--name", required=True)
    pp.add_argument("--max-flows", type=int, required=True)
    p.add_argument("--out-dir", default="examples-out")
    p.add_argument("--small", action="store_true", help="2 x 2 points, one trial each")
    args = p.parse_args(argv)
    if args.cmd == "peer":
        trio.run(peer, args.role, args.server, args.name, args.max_flows)
        return 0
    out = Path(args.out_dir)
    results = out / "trials.jsonl"
    counts = run_sweep(SMALL if args.small else SWEEP, results, trial_fn=trial)
    rows = plots.load(results)
    try:
        written = plots.two_params(rows, out, "max_flows", "background", "flows-x-background")
    except ImportError:
        print("the plots need matplotlib: pip install -e '.[experiment]' (the JSON lines are written)", file=sys.stderr)
        written = []
    goodput = [r for r in rows if r["result"].get("goodput_bps")]
    print(json.dumps({**counts, "plots": [str(w) for w in written],
                      "goodput_mbps": sorted(round(r["result"]["goodput_bps"] / 1e6, 3) for r in goodput)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
