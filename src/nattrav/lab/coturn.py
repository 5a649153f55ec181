"""A real coturn (Debian package `coturn`) for the tests and the lab: its config rendered from a few
words, started as a child (on loopback, or inside a lab node through `lab.popen`), ready once it
says so, stopped and its files removed on exit. The relay nattrav's rendezvous server hands peers
credentials for runs with --use-auth-secret, exactly as docs/deploy.md sets it up."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import LabError

READY = "Total General servers"  # coturn's log line once its listeners and relays are up


@dataclass(frozen=True)
class CoturnConfig:
    listen_ip: str
    port: int
    secret: str  # the TURN REST shared secret (static-auth-secret)
    relay_ip: str | None = None  # default: listen_ip
    min_port: int = 49160
    max_port: int = 49359
    realm: str = "nattrav.lab"
    allow_loopback: bool = False  # loopback tests relay to 127.0.0.0/8 peers

    def render(self, workdir: str) -> str:
        lines = [
            f"listening-ip={self.listen_ip}", f"listening-port={self.port}",
            f"relay-ip={self.relay_ip or self.listen_ip}",
            f"min-port={self.min_port}", f"max-port={self.max_port}",
            "use-auth-secret", f"static-auth-secret={self.secret}", f"realm={self.realm}",
            "fingerprint", "no-tls", "no-dtls", "no-cli", "no-multicast-peers",
            # both address families would need an IPv6 relay address; the lab is IPv4
            "no-rfc5780", "no-stun-backward-compatibility",
            f"userdb={os.path.join(workdir, 'turndb')}", f"pidfile={os.path.join(workdir, 'turnserver.pid')}",
            "log-file=stdout", "simple-log",
        ]
        if self.allow_loopback:
            lines.append("allow-loopback-peers")
        return "\n".join(lines) + "\n"


class Coturn:
    """`with Coturn(config) as turn:` runs turnserver until the block ends. `runner(argv, **popen)`
    starts it (default subprocess.Popen; in the lab: functools.partial(lab.popen, "server"))."""

    def __init__(self, config: CoturnConfig, runner: Callable[..., subprocess.Popen] | None = None,
                 ready_timeout: float = 15.0) -> None:
        self.config = config
        self.runner = runner or subprocess.Popen
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []
        self._dir: str | None = None

    def __enter__(self) -> Coturn:
        exe = shutil.which("turnserver") or "/usr/bin/turnserver"
        if not os.path.exists(exe):
            raise LabError("coturn is not installed (apt-get install coturn; .ci/install does it)")
        self._dir = tempfile.mkdtemp(prefix="nt-coturn-")
        conf = os.path.join(self._dir, "turnserver.conf")
        with open(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(self.config.render(self._dir))
        self.proc = self.runner([exe, "-c", conf], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True)
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line.rstrip())
                if READY in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.ready_timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise LabError("coturn did not start: " + " | ".join(self.log[-8:]))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


__all__ = ["Coturn", "CoturnConfig"]
