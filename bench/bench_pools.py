"""NATs with an address pool (RFC 4787 §4.1), UDP, in the lab: each pair's success rate with the
server observing punch sockets (today) against the same server started with --no-observe (the
baseline: peers aimed at the TCP connection's address only), interleaved in the same run, with
Wilson 95 % intervals. Needs root (the lab).

    .venv/bin/python bench/bench_pools.py --trials 10 --out bench/results/pools.md
    .venv/bin/python bench/bench_pools.py --sample-latency 200   # loopback, no lab, no root

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10, help="trials per pair and variant (default 10)")
    ap.add_argument("--chunk", type=int, default=5, help="trials per lab, variants alternating (default 5)")
    ap.add_argument("--out", type=pathlib.Path, help="write the markdown table here too")
    ap.add_argument("--sample-latency", type=int, metavar="N", help="the loopback volley timing instead (see above)")
    args = ap.parse_args(argv)
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
