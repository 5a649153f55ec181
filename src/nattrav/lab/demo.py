"""The main job: two peers behind symmetric NATs connect through our own servers, in the NAT lab.

A lab comes up (host a behind nat_a, host b behind nat_b, both sequential symmetric NATs by default;
our rendezvous + two-address STUN server on 198.51.100.1/.2), `nattrav-server --stun` starts there,
b runs `nattrav-fast` and waits, a runs `nattrav-fast -d <b's ID>`, each pipes a line to the other.
Every phase each peer reports is shown; the lab is torn down at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from ..cli.events import describe
from .errors import LabError
from .lab import Lab
from .matrix import wait_tcp

from .agent import SERVER_PORT  # noqa: E402  (one place for the lab server port)


def _reader(stream: Any, sink: queue.Queue, tag: str) -> None:
    for line in iter(stream.readline, b""):
        sink.put((tag, line.decode(errors="replace").rstrip("\n")))
    sink.put((tag, None))


def _events(proc: subprocess.Popen, tag: str, sink: queue.Queue) -> threading.Thread:
    t = threading.Thread(target=_reader, args=(proc.stderr, sink, tag), daemon=True)
    t.start()
    return t


def _show(tag: str, ev: dict[str, Any]) -> str | None:
    if ev.get("event") == "error":
        return f"[{tag}] ERROR: {ev.get('message')}"
    line = describe(ev.get("event", ""), ev)
    return None if line is None else f"[{tag}] {line}"


def run_demo(left: str, right: str, timeout: float = 60.0, out=print, *, tcp: bool = False,
             shape: str | None = None) -> bool:
    """Run the demo (over TCP with `tcp`, over a lab shape such as "wan50"); True when both peers
    received each other's line."""
    proto = "TCP" if tcp else "UDP"
    out(f"nattrav demo ({proto}): peer a behind a '{left}' NAT, peer b behind a '{right}' NAT"
        + (f", shape '{shape}'" if shape else ""))
    t0 = time.monotonic()
    # each peer its own identity key: the lab's hosts share one disk
    with Lab(left=left, right=right, shape=shape) as lab, tempfile.TemporaryDirectory(prefix="nattrav-demo-") as keys:
        out(f"lab up in {time.monotonic() - t0:.2f} s: a={lab.ip('a')} behind {lab.wan_ip('a')}, "
            f"b={lab.ip('b')} behind {lab.wan_ip('b')}, servers {lab.S1} and {lab.S2}")
        py = sys.executable
        lab.popen("server", [py, "-m", "nattrav.cli.server", "--listen", f"{lab.S1}:{SERVER_PORT}",
                             "--stun", f"{lab.S1},{lab.S2}"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_tcp(lab, lab.S1, SERVER_PORT, time.monotonic() + 20)
        out(f"servers up: rendezvous {lab.S1}:{SERVER_PORT}, STUN {lab.S1}:3478 + {lab.S2}:3479")
        fast = [py, "-m", "nattrav.cli.fast", "-s", f"{lab.S1}:{SERVER_PORT}", "--plain", "--json",
                "--timeout", str(timeout), "--linger", "2"] + (["--tcp"] if tcp else [])
        events: queue.Queue = queue.Queue()
        b = lab.popen("b", fast + ["--identity", os.path.join(keys, "b.pem")], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _events(b, "b", events)
        peer_id = None
        a = None
        got: dict[str, bytes] = {}
        done = set()
        deadline = time.monotonic() + timeout
        while len(done) < (2 if a else 1) and time.monotonic() < deadline:
            try:
                tag, line = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                done.add(tag)
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                out(f"[{tag}] {line}")
                continue
            shown = _show(tag, ev)
            if shown:
                out(shown)
            if ev.get("event") == "enrolled" and a is None:
                peer_id = ev["peer_id"]
                a = lab.popen("a", fast + ["--identity", os.path.join(keys, "a.pem"), "-d", peer_id], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                _events(a, "a", events)
                a.stdin.write(b"hello from a\n")
                a.stdin.close()
            if ev.get("event") == "connected" and tag == "b":
                b.stdin.write(b"hello from b\n")
                b.stdin.close()
        for tag, proc in (("a", a), ("b", b)):
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            got[tag] = proc.stdout.read()
        ok = got.get("a") == b"hello from b\n" and got.get("b") == b"hello from a\n"
        out(f"[a] received: {got.get('a', b'')!r}")
        out(f"[b] received: {got.get('b', b'')!r}")
    out(f"lab torn down; total {time.monotonic() - t0:.1f} s")
    out("RESULT: " + (f"the two peers behind '{left}' and '{right}' NATs connected directly ({proto}) "
                      "through our servers" if ok else "the peers did NOT connect (see the errors above)"))
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nattrav-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--left", default="symmetric-seq", help="NAT preset in front of peer a")
    p.add_argument("--right", default="symmetric-seq", help="NAT preset in front of peer b")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--tcp", action="store_true", help="connect over TCP (nattrav-fast --tcp)")
    p.add_argument("--shape", help="lab shape: delay, loss and routers between the NATs (e.g. wan50; "
                   "`nattrav-lab list --presets` lists them)")
    args = p.parse_args(argv)
    try:
        return 0 if run_demo(args.left, args.right, args.timeout, tcp=args.tcp, shape=args.shape) else 1
    except LabError as exc:
        print(f"nattrav-demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nattrav-demo: interrupted; lab torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
