"""nattrav-lab: bring NAT labs up and down, run commands inside them, measure a preset.

    nattrav-lab up --left symmetric-seq --right port-restricted [--shape wan50] [--json]
    nattrav-lab up --left 'port-restricted+cgn-random' --right 'symmetric-seq,public_ips=4' 
    nattrav-lab exec a -- python3 -c 'print(1)'
    nattrav-lab probe symmetric-seq-7 [--json]
    nattrav-lab path wan50 [--json]          # measure a shape: RTT, loss, who answers an expiring packet
    nattrav-lab list [--presets] [--json]
    nattrav-lab down [ID | --all]
    nattrav-lab sweep [--json]

Every failure a person can fix ends as one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from . import netns, registry
from .errors import LabError
from .lab import Lab
from .tools import preflight
from .shape import SHAPES
from ..cli.version import add_version_flag
from .spec import PRESETS, effective, resolve

EXIT_USAGE = 2


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _pick(lab_id: str | None) -> Lab:
    if lab_id:
        return Lab.attach(lab_id)
    persistent = [i for i, st in registry.all_states().items() if st.get("persistent")]
    if not persistent:
        raise LabError("no lab is up: start one with `nattrav-lab up`")
    if len(persistent) > 1:
        raise LabError(f"several labs are up ({', '.join(sorted(persistent))}): pass --lab ID")
    return Lab.attach(persistent[0])


def cmd_up(a) -> int:
    background = None
    if a.background:
        background = {side: a.background for side, p in (("a", a.left), ("b", a.right)) if p != "none"}
    lab = Lab(a.left, a.right, hosts_per_nat=a.hosts_per_nat, background=background,
              second_server=a.second_server, shape=a.shape)
    lab.up()
    lab.detach()
    info = lab.describe()
    info["up_seconds"] = round(lab.timings["up"], 3)
    if a.json:
        _print_json(info)
    else:
        print(f"lab {lab.id} up in {lab.timings['up']:.2f}s  (S1={lab.S1} S2={lab.S2}, low TTL from a: {lab.low_ttl})")
        for name, n in info["nodes"].items():
            extra = f" NAT {n['spec']}" if n["spec"] else ""
            print(f"  {name:8} {n['ns']:18} {' '.join(n['ips']):32} public {n['wan_ip'] or '-'}{extra}")
        print(f"run inside: nattrav-lab exec a -- CMD    tear down: nattrav-lab down {lab.id}")
    return 0


def cmd_exec(a) -> int:
    lab = _pick(a.lab)
    argv = list(a.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LabError("nothing to run: nattrav-lab exec NODE -- CMD [ARGS...]")
    return subprocess.call(lab._argv(a.node, argv))


def cmd_down(a) -> int:
    ids = list(registry.all_states()) if a.all else [a.id or _pick(None).id]
    removed = []
    for lab_id in ids:
        st = registry.read_state(lab_id)
        if st is None:
            raise LabError(f"no lab {lab_id!r}; `nattrav-lab list` shows the running ones")
        if not st.get("persistent") and registry.owner_alive(st) and not a.all:
            raise LabError(f"lab {lab_id} belongs to running process {st['pid']}; it removes it itself")
        if not st.get("persistent") and registry.owner_alive(st):
            continue  # --all never pulls a lab from under a live test run
        names = registry.namespaces_of(lab_id)
        registry.destroy(names, grace=1.0)
        registry.drop_state(lab_id)
        removed += names
    return _print_removed(a, removed, "removed {} namespaces")


def cmd_sweep(a) -> int:
    return _print_removed(a, registry.sweep(include_persistent=a.all), "swept {} leftover namespaces")


def _print_removed(a, removed: list[str], what: str) -> int:
    """The namespaces a command removed, as JSON or as `what` (with their count) and their names."""
    if a.json:
        _print_json({"removed": removed})
    else:
        print(what.format(len(removed)) + (f": {' '.join(removed)}" if removed else ""))
    return 0


def cmd_list(a) -> int:
    labs = []
    for lab_id, st in sorted(registry.all_states().items()):
        labs.append({
            "id": lab_id,
            "owner_pid": st.get("pid"),
            "owner_alive": registry.owner_alive(st),
            "persistent": bool(st.get("persistent")),
            "left": (st.get("left") or {}).get("name", "none"),
            "right": (st.get("right") or {}).get("name", "none"),
            "namespaces": registry.namespaces_of(lab_id),
        })
    presets = {name: (None if s is None else s.describe()) for name, s in PRESETS.items()}
    shapes = {name: s.describe() for name, s in SHAPES.items()}
    if a.json:
        _print_json({"labs": labs, "presets": presets, "shapes": shapes} if a.presets else {"labs": labs})
        return 0
    if a.presets:
        print(f"{'preset':20} {'mapping':7} {'filter':6} {'allocation':10} {'delta':5} hairpin layers")
        for name, s in PRESETS.items():
            if s is None:
                print(f"{name:20} public host (no NAT)")
            else:
                print(f"{name:20} {s.mapping:7} {s.filtering:6} {s.allocation:10} {s.delta:<5} "
                      f"{str(s.hairpin):7} {s.layers}  {_extras(s)}".rstrip())
        print("symmetric-seq-N      any delta N in 1..1000")
        print("layers: INNER+OUTER[+OUTER] (e.g. port-restricted+cgn-random); changes: NAME,field=value,...")
        print(f"\n{'shape':10} routers a/b  access links")
        for name, sh in SHAPES.items():
            link = sh.link("a")
            desc = "-" if link is None else (f"{link.delay_ms:g} ms ±{link.jitter_ms:g} ({link.distribution}), "
                                             f"{link.loss_percent:g}% loss" + (f", {link.rate_mbit:g} Mbit/s" if link.rate_mbit else ""))
            print(f"{name:10} {sh.routers_a}/{sh.routers_b:<9} {desc}" + ("  switched LAN" if sh.lan == "switched" else ""))
    if not labs:
        print("no labs")
    for lab in labs:
        owner = "persistent" if lab["persistent"] else f"pid {lab['owner_pid']} " + (
            "alive" if lab["owner_alive"] else "DEAD (nattrav-lab sweep removes it)")
        print(f"{lab['id']}  {lab['left']} | {lab['right']}  {len(lab['namespaces'])} namespaces  {owner}")
    others = [n for n in netns.list_names(registry.PREFIX) if registry.lab_id_of(n) not in registry.all_states()]
    if others and not a.json:
        print(f"(other nt-* namespaces, not made by nattrav-lab: {len(others)})")
    return 0


def _extras(s) -> str:
    """What a preset adds beyond the RFC 4787 triple, in a few words."""
    out = []
    if s.tcp is not None:
        out.append(f"TCP {s.tcp.mapping}/{s.tcp.filtering}/{s.tcp.allocation}")
    if s.public_ips > 1:
        out.append(f"{s.public_ips} addresses {s.pooling}")
    if s.max_flows:
        out.append(f"{s.max_flows} flows")
    if s.flows_per_host:
        out.append(f"{s.flows_per_host} flows/host")
    return ", ".join(out)


_ROWS = ("mapping", "filtering", "allocation", "delta", "hairpin", "tcp_unsolicited", "loss_percent", "udp_timeout")


def cmd_probe(a) -> int:
    from .probe import measure

    spec = resolve(a.preset)
    if spec is not None:
        spec = spec.with_timeout(a.udp_timeout)
    lifetime = None
    if a.lifetime and spec is not None:
        t = a.udp_timeout
        lifetime = [t - 1.5, t - 0.5, t + 0.5, t + 1.5] if t > 1.5 else [t / 2, t + 0.5, t + 1.5]
    with Lab(spec, "none", hosts_per_nat=2) as lab:
        m = measure(lab, "a", lifetime_delays=lifetime, loss_count=a.loss_count)
    measured = m.as_dict()
    if m.udp_timeout is not None:
        lo, hi = m.udp_timeout
        measured["udp_timeout"] = f"{lo:g}..{hi:g}s" if hi != float("inf") else f">{lo:g}s"
    exp = effective(spec) or {"mapping": "none (public)", "filtering": "EIF", "allocation": "preserve",
                              "delta": 0, "hairpin": None, "tcp_unsolicited": None, "loss_percent": 0.0,
                              "udp_timeout": None}
    if a.json:
        _print_json({"preset": a.preset, "expected": exp, "measured": measured})
        return 0
    print(f"preset {a.preset}: measured from host a (public IP seen: {m.public_ip})")
    print(f"  {'behaviour':16} {'expected':16} measured")
    for row in _ROWS:
        want = exp.get(row)
        got = measured.get(row)
        if row == "udp_timeout" and want is not None:
            want = f"{want}s"
        if row == "mapping" and m.nat is False:
            got = "none (public)"
        if row == "udp_timeout" and lifetime is None:
            got = "(not measured; --lifetime)"
        print(f"  {row:16} {str(want):16} {got}")
    if m.ports:
        print(f"  ports handed out (S1, S2 per socket): {m.ports}")
    return 0


def cmd_path(a) -> int:
    """Bring a shape up (host a behind a port-restricted NAT, b public), measure it from a, compare."""
    from .probe import loss_run, start_responder
    from .probe_path import rtt_run, rtt_summary, trace_run
    from .shape import resolve_shape
    from .topology import expected_trace

    shape = resolve_shape(a.shape)
    with Lab("port-restricted", "none", shape=shape) as lab:
        start_responder(lab)
        s1 = (lab.S1, 7000)
        # spaced wider than any jitter range, so in-order delivery never holds a reply back
        want_trace = expected_trace(lab.topology, "a", "b")
        trace = lab.call("a", trace_run, (lab.wan_ip("b"), 33434), len(want_trace), 2.0, timeout=600)
        rtt = rtt_summary(lab.call("a", rtt_run, s1, a.pings, a.gap, timeout=600))
        # last: a rate-limited link may still be draining this burst for a while
        loss = lab.call("a", loss_run, s1, a.loss_count, timeout=600)
    link = shape.link("a")
    base = (link.delay_ms if link else 0.0)
    lost = None if loss["received"] is None else 100.0 * (1 - loss["received"] / loss["sent"])
    out = {"shape": shape.describe(), "rtt": rtt, "one_way_loss_percent": lost, "loss_sent": loss["sent"],
           "trace": trace, "trace_expected": want_trace,
           "expected": {"rtt_ms": 2 * base, "loss_percent": link.loss_percent if link else 0.0}}
    if a.json:
        _print_json(out)
        return 0
    print(f"shape {shape.name}: host a behind a port-restricted NAT, measured towards S1 and host b")
    print(f"  {'':22} {'configured':>12} {'measured':>12}")
    print(f"  {'RTT mean (ms)':22} {2 * base:12.2f} {rtt['mean_ms']:12.2f}   ({a.pings} echoes, min "
          f"{rtt['min_ms']:.2f}, max {rtt['max_ms']:.2f}, IQR {rtt['iqr_ms']:.2f})")
    print(f"  {'one-way loss (%)':22} {out['expected']['loss_percent']:12.3f} "
          f"{'n/a' if lost is None else f'{lost:12.3f}'}   ({loss['sent']} datagrams)")
    ok = trace == want_trace
    print(f"  time-exceeded from    {len(want_trace)} hops, {'all answered' if ok else 'MISMATCH'}: "
          f"{' '.join(x or '*' for x in trace)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nattrav-lab", description="NAT lab: RFC 4787 NATs in network namespaces")
    add_version_flag(ap)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", help="bring a lab up and leave it running")
    p.add_argument("--left", default="symmetric-seq",
                   help="NAT for host a (default symmetric-seq): a preset, PRESET,field=value, or INNER+OUTER layers")
    p.add_argument("--right", default="port-restricted", help="preset for host b's NAT (default port-restricted)")
    p.add_argument("--hosts-per-nat", type=int, default=1)
    p.add_argument("--background", type=float, default=0.0, help="ports/s consumed by a helper host per NAT")
    p.add_argument("--second-server", action="store_true")
    p.add_argument("--shape", default="flat", help="routers, impaired links, LAN kind (list --presets shows them)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("exec", help="run a command inside a node: exec NODE -- CMD")
    p.add_argument("--lab", help="lab id (default: the only one up)")
    p.add_argument("node")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(fn=cmd_exec)

    p = sub.add_parser("probe", help="bring a preset up behind host a, measure it, print the table")
    p.add_argument("preset")
    p.add_argument("--udp-timeout", type=int, default=3, help="mapping lifetime to configure (default 3 s)")
    p.add_argument("--lifetime", action="store_true", help="also measure the mapping lifetime (takes ~T+2 s)")
    p.add_argument("--loss-count", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_probe)

    p = sub.add_parser("path", help="bring a shape up and measure its delay, loss and hops against it")
    p.add_argument("shape", help="a shape name (list --presets shows them)")
    p.add_argument("--pings", type=int, default=200)
    p.add_argument("--gap", type=float, default=0.025, help="seconds between echoes (default 0.025)")
    p.add_argument("--loss-count", type=int, default=100_000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_path)

    p = sub.add_parser("down", help="remove a lab started with `up`")
    p.add_argument("id", nargs="?")
    p.add_argument("--all", action="store_true", help="every lab whose owner is not a live process")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_down)

    p = sub.add_parser("sweep", help="remove leftovers of crashed runs (owner process gone)")
    p.add_argument("--all", action="store_true", help="also labs left running by `up`")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("list", help="labs that are up (and --presets)")
    p.add_argument("--presets", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_list)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        # up and probe check their input first (a typo is reported even without root), then preflight
        if a.cmd in ("exec", "down", "sweep"):
            preflight()
        return a.fn(a)
    except LabError as exc:
        print(f"nattrav-lab: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nattrav-lab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nattrav-lab list | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
