"""Running nattrav-fast pairs in the NAT lab, as a user would (only the server's address and the
peer's ID on the command line), for the secure-path lab tests and bench/bench_idle_path.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nattrav.lab.matrix import SERVER_PORT, wait_tcp

FAST = [sys.executable, "-m", "nattrav.cli.fast"]


@dataclass
class Side:
    """One nattrav-fast process: its JSON events (read by a thread), its exit status."""

    proc: subprocess.Popen
    events: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            with self._changed:
                self.lines.append(line)
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    pass
                self._changed.notify_all()
        with self._changed:
            self.events.append({"event": "<exit>"})
            self._changed.notify_all()

    def wait_event(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for ev in self.events:
                    if ev.get("event") == kind:
                        return ev
                    if ev.get("event") == "<exit>":
                        raise AssertionError(f"exited before {kind!r}: {self.lines[-5:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind!r} within {timeout:g} s: {self.lines[-5:]}")
                self._changed.wait(left)

    def event(self, kind: str) -> dict | None:
        return next((e for e in self.events if e.get("event") == kind), None)

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running after {timeout:g} s: {self.lines[-5:]}") from None


def start_server(lab: Any, extra: list[str] | None = None) -> str:
    lab.popen("server", [sys.executable, "-m", "nattrav.cli.server", "--listen", f"{lab.S1}:{SERVER_PORT}",
                         "--stun", f"{lab.S1},{lab.S2}", *(extra or [])],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_tcp(lab, lab.S1, SERVER_PORT, time.monotonic() + 20)
    return f"{lab.S1}:{SERVER_PORT}"


def start_fast(lab: Any, host: str, keys: Path, args: list[str], *, stdin: IO | int = subprocess.PIPE,
               stdout: IO | int = subprocess.DEVNULL) -> Side:
    argv = [*FAST, "--json", "--identity", str(keys / f"{host}.pem"), *args]
    return Side(lab.popen(host, argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE))


def start_pair(lab: Any, keys: Path, server: str, *, b_args: list[str] = (), a_args: list[str] = (),
               a_stdin: IO | int = subprocess.PIPE, b_stdout: IO | int = subprocess.DEVNULL,
               b_stdin: IO | int = subprocess.PIPE) -> tuple[Side, Side, str]:
    """b listens, a connects to b's peer ID: (a, b, b's ID)."""
    os.makedirs(keys, exist_ok=True)
    b = start_fast(lab, "b", keys, ["-s", server, *b_args], stdin=b_stdin, stdout=b_stdout)
    peer_id = b.wait_event("enrolled", 30)["peer_id"]
    a = start_fast(lab, "a", keys, ["-s", server, "-d", peer_id, *a_args], stdin=a_stdin)
    return a, b, peer_id
