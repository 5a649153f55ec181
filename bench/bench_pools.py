"""NATs with an address pool (RFC 4787 §4.1), UDP, in the lab: each pair's success rate with the
server observing punch sockets (today) against the same server started with --no-observe (the
baseline: peers aimed at the TCP connection's address only), interleaved in the same run, with
Wilson 95 % intervals. Needs root (the lab).

    .venv/bin/python bench/bench_pools.py --trials 10 --out bench/results/pools.md
    .venv/bin/python bench/bench_pools.py --sample-latency 200   # loopback, no lab, no root

    .venv/bin/python bench/bench_pools.py --relay-listener 12 --baseline-python /work/main/.venv/bin/python

--relay-listener N: a symmetric NAT with an arbitrary pool of 4 LISTENS, a port-restricted cone
asks, coturn beside the servers: N trials with this build, and (--baseline-python) N with another
build's interpreter (e.g. the main branch's venv, before the pool survey), interleaved in chunks.

--sample-latency N: the punch socket's sampling volley (two STUN samples) on loopback, with the
observation request in it against without, N times each, interleaved: median and p95 seconds and
their ratio (the observation must cost the critical path nothing when answered).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

from nattrav.lab.matrix import run_pair, wilson

PAIRS = [
    ("full-cone,public_ips=3,pooling=arbitrary", "port-restricted"),
    ("full-cone,public_ips=3,pooling=arbitrary", "symmetric-seq"),
    ("port-restricted,public_ips=3,pooling=arbitrary", "port-restricted"),
    ("port-restricted,public_ips=3,pooling=arbitrary", "symmetric-seq"),
]


async def _latency(n: int) -> str:
    import statistics

    import trio

    from nattrav.api.udp import _sample
    from nattrav.io.rendezvous_server import serve_rendezvous
    from nattrav.io.stun_server import serve_stun
    from nattrav.proto.stun_server import StunServerConfig

    def free_pair() -> tuple[int, int]:
        import socket
        out = []
        for _ in range(2):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("127.0.0.1", 0))
            out.append(u)
        ports = tuple(u.getsockname()[1] for u in out)
        for u in out:
            u.close()
        return ports

    times: dict[str, list[float]] = {"with": [], "without": []}
    async with trio.open_nursery() as nursery:
        rv = await nursery.start(lambda task_status: serve_rendezvous("127.0.0.1", 0, task_status=task_status))
        port, alt = free_pair()
        await nursery.start(serve_stun, StunServerConfig(ip="127.0.0.1", port=port, alt_port=alt))
        targets = [("127.0.0.1", port), ("127.0.0.1", alt)]
        await trio.sleep(0.1)
        for _ in range(n):
            await trio.sleep(0.02)  # below the port's per-source rate (one source here: loopback)
            for kind in ("with", "without"):
                with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
                    await sock.bind(("127.0.0.1", 0))
                    t0 = trio.current_time()
                    got = await _sample(sock, targets, t0, observe=rv if kind == "with" else None)
                    times[kind].append(trio.current_time() - t0)
                    assert (got.observed is not None) == (kind == "with")
        nursery.cancel_scope.cancel()
    med = {k: statistics.median(v) for k, v in times.items()}
    p95 = {k: sorted(v)[int(0.95 * len(v))] for k, v in times.items()}
    return (f"sampling volley on loopback, {n} each, interleaved: with the observation median "
            f"{med['with'] * 1e3:.3f} ms (p95 {p95['with'] * 1e3:.3f}), without {med['without'] * 1e3:.3f} ms "
            f"(p95 {p95['without'] * 1e3:.3f}); ratio of medians {med['with'] / med['without']:.2f}")


SCATTERED = "symmetric-random,public_ips=4,pooling=arbitrary"
_LISTENER = (
    "import json, sys\n"
    "from nattrav.lab.matrix import run_pair\n"
    "res = run_pair('port-restricted', sys.argv[1], int(sys.argv[2]), trial_timeout=20, relay=True)\n"
    "print(json.dumps([[r.ok, r.strategy, (r.reason or '')[:200]] for r in res]))\n")


def _listener_trials(python: str, n: int) -> list:
    import json
    import subprocess

    out = subprocess.run([python, "-c", _LISTENER, SCATTERED, str(n)], capture_output=True, text=True,
                         check=True, timeout=60 * n + 120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def relay_listener(n: int, baseline: str | None, chunk: int) -> str:
    load0 = open("/proc/loadavg").read().split()[:3]
    got: dict[str, list] = {"today": [], "baseline": []}
    while len(got["today"]) < n:
        k = min(chunk, n - len(got["today"]))
        got["today"] += _listener_trials(sys.executable, k)
        if baseline:
            got["baseline"] += _listener_trials(baseline, k)
        print({v: sum(ok for ok, _, _ in r) for v, r in got.items()}, flush=True)
    load1 = open("/proc/loadavg").read().split()[:3]
    lines = [f"`.venv/bin/python bench/bench_pools.py --relay-listener {n}"
             + (f" --baseline-python {baseline}`" if baseline else "`")
             + f" on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load before {' '.join(load0)}, "
             f"after {' '.join(load1)}.", "",
             "| listener `" + SCATTERED + "` ← asker `port-restricted`, relay on | ok [Wilson 95 %] | how |",
             "|---|---|---|"]
    for variant, rows in got.items():
        if not rows:
            continue
        ok = sum(r[0] for r in rows)
        lo, hi = wilson(ok, len(rows))
        how = sorted({str(r[1]) for r in rows if r[0]}) or sorted({r[2][:80] for r in rows})[:2]
        lines.append(f"| {variant} | {ok}/{len(rows)} [{lo:.2f}, {hi:.2f}] | {', '.join(how)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10, help="trials per pair and variant (default 10)")
    ap.add_argument("--chunk", type=int, default=5, help="trials per lab, variants alternating (default 5)")
    ap.add_argument("--out", type=pathlib.Path, help="write the markdown table here too")
    ap.add_argument("--sample-latency", type=int, metavar="N", help="the loopback volley timing instead (see above)")
    ap.add_argument("--relay-listener", type=int, metavar="N", help="the pooled listener's relay trials (see above)")
    ap.add_argument("--baseline-python", help="with --relay-listener: another build's python for the baseline")
    args = ap.parse_args(argv)
    if args.relay_listener:
        if os.geteuid() != 0:
            print("bench_pools: the lab needs root", file=sys.stderr)
            return 2
        print(relay_listener(args.relay_listener, args.baseline_python, args.chunk))
        return 0
    if args.sample_latency:
        import trio
        print(f"load {' '.join(open('/proc/loadavg').read().split()[:3])}")
        print(trio.run(_latency, args.sample_latency))
        return 0
    if os.geteuid() != 0:
        print("bench_pools: the lab needs root", file=sys.stderr)
        return 2
    load0 = open("/proc/loadavg").read().split()[:3]
    rows = []
    for left, right in PAIRS:
        got = {"observed": [], "baseline": []}
        while len(got["baseline"]) < args.trials:
            n = min(args.chunk, args.trials - len(got["baseline"]))
            for variant, flags in (("observed", []), ("baseline", ["--no-observe"])):
                got[variant] += run_pair(left, right, n, trial_timeout=15, server_flags=flags)
        line = [f"`{left}` ↔ `{right}`"]
        for variant in ("observed", "baseline"):
            ok = sum(r.ok for r in got[variant])
            lo, hi = wilson(ok, len(got[variant]))
            strategies = sorted({r.strategy for r in got[variant] if r.ok and r.strategy})
            line.append(f"{ok}/{len(got[variant])} [{lo:.2f}, {hi:.2f}] {','.join(strategies)}")
        rows.append(line)
        print(" | ".join(line), flush=True)
    load1 = open("/proc/loadavg").read().split()[:3]
    table = ["| pair | observed (today): ok [Wilson 95 %] strategy | --no-observe (baseline) |",
             "|---|---|---|"] + [f"| {' | '.join(r)} |" for r in rows]
    text = "\n".join([
        "# Address pools (RFC 4787 §4.1): UDP success with and without the punch socket's observation", "",
        f"`.venv/bin/python bench/bench_pools.py --trials {args.trials}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"load average before {' '.join(load0)}, after {' '.join(load1)} (2 cores shared with other jobs).",
        "The baseline is the same build with `nattrav-server --no-observe`, interleaved in the same run.", "",
        *table, ""])
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
