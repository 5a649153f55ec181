"""nattrav-server processes for tests and benches: started with the flags a user would type, their
address read from the first stdout line, stopped (SIGTERM, then SIGKILL) at the end."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from contextlib import ExitStack, contextmanager

from tests.conftest import readline

SERVER = [sys.executable, "-m", "nattrav.cli.server"]


class Instance:
    def __init__(self, proc: subprocess.Popen, addr: tuple[str, int]):
        self.proc = proc
        self.addr = addr

    def kill(self) -> None:
        """Die as a crashed process does: no goodbye to anyone (the kernel closes its sockets)."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> list[dict]:
        """The JSON log lines (only once stopped: stderr is read to its end)."""
        return [json.loads(line) for line in self.proc.stderr.read().splitlines() if line.startswith("{")]


@contextmanager
def instance(*args: str, prefix: list[str] | None = None):
    proc = subprocess.Popen([*(prefix or []), *SERVER, "--listen", "127.0.0.1:0", "--json-log", "-v", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = json.loads(readline(proc))
        host, port = line["address"].rsplit(":", 1)
        inst = Instance(proc, (host, int(port)))
        yield inst
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def instances(n: int, *args: str, prefix: list[str] | None = None):
    with ExitStack() as stack:
        yield [stack.enter_context(instance(*args, prefix=prefix)) for _ in range(n)]
