#!/usr/bin/env python3
"""Instructions a fire costs the coordinator and the worker, counted by callgrind (user space only):
the repeatable measure of the fixed cost of one fire when wall and even CPU time move with the load
of a shared machine.

    .venv/bin/python bench/burst_instructions.py [--packets 1] [--ttl 0] [--json FILE]

Runs the same small program under `valgrind --tool=callgrind --trace-children=yes` twice, with
--few and --many fires of a burst of --packets packets (one socket each) over loopback, and prints
(instructions(many) - instructions(few)) / (many - few) for each process: start-up and shutdown cancel
out. Kernel work (the syscalls themselves) is not counted; strace -c counts those. Needs valgrind;
each run takes a minute or so (Python under valgrind starts slowly)."""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# the program valgrind runs: a coordinator with one worker firing the same burst n times; the worker
# is shut down and awaited before exit so that callgrind writes its counts (a killed one writes none)
PROGRAM = r'''
import socket, sys, trio
from array import array
from nattrav.core import Burst
from nattrav.workers import open_coordinator
import nattrav.workers.coordinator as coordinator
coordinator.START_TIMEOUT = 600  # a worker starts slowly under valgrind
n, packets, ttl = map(int, sys.argv[1:4])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # overflow is dropped: senders never wait
rx.bind(("127.0.0.1", 0))
port = rx.getsockname()[1]

async def main():
    plan = Burst(range(packets), "127.0.0.1", array("H", [port]) * packets, b"x" * 28, ttl=ttl or None).pack()
    async with open_coordinator(1, reply_timeout=300) as coord:
        await coord.open_sockets(packets, "127.0.0.1")
        for _ in range(n):
            await coord.fire(plan)
        for w in coord._workers:
            await w.request("shutdown", 300)
            with trio.move_on_after(300):
                while w.proc.returncode is None:
                    await trio.sleep(0.2)

trio.run(main)
'''


def run(tmp: str, n: int, packets: int, ttl: int) -> dict[str, int]:
    prog = os.path.join(tmp, "fire.py")
    with open(prog, "w") as f:
        f.write(PROGRAM)
    out = os.path.join(tmp, f"cg-{n}")
    os.mkdir(out)
    subprocess.run(["valgrind", "--tool=callgrind", "--trace-children=yes",
                    f"--callgrind-out-file={out}/%p", sys.executable, prog, str(n), str(packets), str(ttl)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    counts: dict[str, int] = {}
    for path in glob.glob(f"{out}/*"):
        with open(path) as f:
            text = f.read()
        cmd = re.search(r"^cmd: (.*)$", text, re.M)
        total = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
        if not cmd or not total or sys.executable not in cmd.group(1):
            continue  # helpers the run spawned (nothing of ours)
        who = "worker" if "nattrav.workers.worker" in cmd.group(1) else "coordinator"
        if who == "coordinator" and prog not in cmd.group(1):
            continue
        counts[who] = int(total.group(1))
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1, help="packets a burst, one socket each (default 1)")
    ap.add_argument("--ttl", type=int, default=0, help="the burst's TTL (0: the sockets' own)")
    ap.add_argument("--few", type=int, default=20)
    ap.add_argument("--many", type=int, default=120)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("burst_instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    if not 1 <= args.packets <= 4096 or not 0 <= args.ttl <= 255 or not 0 < args.few < args.many:
        print("burst_instructions: --packets 1..4096, --ttl 0..255, 0 < --few < --many", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        few = run(tmp, args.few, args.packets, args.ttl)
        many = run(tmp, args.many, args.packets, args.ttl)
    missing = {"coordinator", "worker"} - (few.keys() & many.keys())
    if missing:
        print(f"burst_instructions: no callgrind counts for {sorted(missing)}", file=sys.stderr)
        return 1
    per = {k: (many[k] - few[k]) / (args.many - args.few) for k in ("coordinator", "worker")}
    print(f"instructions a fire ({args.packets} packet(s), ttl {args.ttl or 'own'}): "
          f"coordinator {per['coordinator']:,.0f}, worker {per['worker']:,.0f}, "
          f"total {per['coordinator'] + per['worker']:,.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"packets": args.packets, "ttl": args.ttl, **per}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
