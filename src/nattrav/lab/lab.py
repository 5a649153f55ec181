"""Lab: bring a two-NAT topology up in network namespaces, and take it down again whatever happens.

The lifecycle lives here; running things inside is exec.Exec, reading NAT state is inspection.Inspect,
the wiring is built by build.build from the pure topology.Topology.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time

from . import netns, registry
from .build import build
from .errors import LabError
from .exec import Exec
from .inspection import Inspect
from .shape import Shape, resolve_shape, shape_from_dict
from .spec import NatSpec, from_dict, resolve
from .tools import preflight
from .topology import S1, S2, S3, Topology, build_topology, nat_chain, path_routers

WIRE_READY_TIMEOUT = 10.0
WIRE_MODULE = "nattrav.lab.wire"  # the delay line's process (a test swaps it to prove cleanup)


def _background_rates(background) -> dict[str, float]:
    if background is None:
        return {}
    if isinstance(background, (int, float)) and not isinstance(background, bool):
        rates = {"a": float(background), "b": float(background)}
    elif isinstance(background, dict):
        rates = {str(k): float(v) for k, v in background.items()}
    else:
        raise LabError("background must be ports/s (a number, for both sides) or a dict like {'a': 50}")
    for side, rate in rates.items():
        if side not in ("a", "b"):
            raise LabError(f"background side {side!r} is unknown; use 'a' or 'b'")
        if not 0 <= rate <= 5000:
            raise LabError(f"background rate {rate} ports/s on side {side!r} is out of range; choose 0..5000")
    return {k: v for k, v in rates.items() if v > 0}


class Lab(Exec, Inspect):
    """Two NATs (left for host "a", right for host "b"), a router and a server on two public IPs.

    Use as `with Lab(...) as lab:` or call up()/down(); from Trio, `await trio.to_thread.run_sync(lab.up)`.
    """

    S1 = S1
    S2 = S2
    S3 = S3

    def __init__(
        self,
        left: str | NatSpec | None = "symmetric-seq",
        right: str | NatSpec | None = "port-restricted",
        *,
        hosts_per_nat: int = 1,
        background: float | dict | None = None,
        second_server: bool = False,
        shape: str | Shape | None = None,
    ) -> None:
        self.shape = resolve_shape(shape)
        self.left = resolve("none" if left is None else left)
        self.right = resolve("none" if right is None else right)
        self.background = _background_rates(background)
        self.hosts_per_nat = hosts_per_nat
        self.second_server = second_server
        self.topology: Topology = build_topology(
            self.left, self.right, hosts_per_nat=hosts_per_nat, background=self.background,
            second_server=second_server, shape=self.shape,
        )
        self.id: str | None = None
        self.persistent = False
        self._procs: list[subprocess.Popen] = []
        self.delay_lines: dict[str, subprocess.Popen] = {}  # wire node -> its delay line process
        self._lock = threading.RLock()
        self._is_up = False
        self.owner_pid: int | None = None
        self.timings: dict[str, float] = {}

    # ----- naming -------------------------------------------------------------------------------
    def _node(self, node: str):
        try:
            return self.topology.nodes[node]
        except KeyError:
            raise LabError(f"no node {node!r} in this lab; nodes: {', '.join(self.topology.nodes)}") from None

    def ns(self, node: str) -> str:
        self._node(node)
        if self.id is None or not self._is_up:
            raise LabError("the lab is not up: call lab.up() (or use `with Lab(...) as lab:`) first")
        return f"{registry.PREFIX}{self.id}-{node}"

    def ip(self, node: str) -> str:
        return self._node(node).ip

    def wan_ip(self, node: str) -> str:
        return self._node(node).wan_ip

    def wan_ips(self, node: str) -> list[str]:
        """Every public address a host's (or NAT's) traffic may leave with: the outermost pool."""
        n = self._node(node)
        if n.kind == "nat":
            return list(n.wan_ips)
        chain = nat_chain(self.topology, node)
        return list(self.topology.nodes[chain[-1]].wan_ips) if chain else [n.wan_ip]

    def nodes(self) -> list[str]:
        return list(self.topology.nodes)

    def nats(self, side: str | None = None) -> list[str]:
        return [n.name for n in self.topology.nats() if side is None or n.side == side]

    def spec(self, side_or_node: str) -> NatSpec | None:
        """The NatSpec of side "a"/"b" (or of the side a node is on)."""
        side = side_or_node if side_or_node in ("a", "b") else self._node(side_or_node).side
        return self.left if side == "a" else self.right

    # ----- TTL: the lab's own knowledge, for lab tests; never handed to the product under test ----
    def hops(self, src: str, dst: str) -> int:
        """Forwarding namespaces (IP hops) between two hosts on opposite sides."""
        routers = path_routers(self.topology, self._node(src).side, self._node(dst).side)
        return len(nat_chain(self.topology, src)) + len(routers) + len(nat_chain(self.topology, dst))

    def low_ttl_from(self, host: str) -> int:
        """The TTL with which a packet from `host` leaves all of its own NATs but dies in the router,
        before any NAT of the other side sees it."""
        self._node(host)
        return len(nat_chain(self.topology, host)) + 1

    @property
    def low_ttl(self) -> int:
        return self.low_ttl_from("a")

    @property
    def ttl_to_die_between(self) -> int:
        return self.low_ttl

    # ----- lifecycle ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        sides = " | ".join("none" if s is None else s.name for s in (self.left, self.right))
        return f"<Lab {self.id or '(down)'} {sides} {'up' if self._is_up else 'down'}>"

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    @property
    def is_up(self) -> bool:
        return self._is_up

    def _state(self) -> dict:
        return {
            **registry.owner_stamp(),
            "id": self.id,
            "persistent": self.persistent,
            "created": time.time(),
            "left": None if self.left is None else self.left.describe(),
            "right": None if self.right is None else self.right.describe(),
            "hosts_per_nat": self.hosts_per_nat,
            "background": self.background,
            "second_server": self.second_server,
            "shape": self.shape.describe(),
        }

    def up(self) -> Lab:
        with self._lock:
            if self._is_up:
                return self
            preflight()
            _sweep_once()
            t0 = time.perf_counter()
            taken = {registry.lab_id_of(n) for n in netns.list_names(registry.PREFIX)}
            while True:
                self.id = secrets.token_hex(2)
                # the O_EXCL state file makes the id ours even against a run starting right now
                if self.id not in taken and registry.claim(self.id, self._state()):
                    break
            self.owner_pid = os.getpid()
            registry.register(self)
            self._is_up = True
            try:
                netns.prepare()
                netns.in_thread(lambda: build(self.topology, self.ns),
                                started=lambda t: setattr(self, "_builder", t))
                self._start_wires()
                self._start_background()
            except BaseException as exc:
                self.down()
                if isinstance(exc, subprocess.CalledProcessError):
                    raise LabError(f"bringing the lab up failed: {exc.cmd[0]} said: {exc.stderr!s:.300}") from exc
                if isinstance(exc, Exception) and not isinstance(exc, LabError):
                    # netlink, OS and nft failures: one line, the lab already removed
                    raise LabError(f"bringing the lab up failed: {type(exc).__name__}: {exc}") from exc
                raise
            self.timings["up"] = time.perf_counter() - t0
            return self

    def _start_wires(self) -> None:
        """One delay line per impaired link; up() returns once each has its sockets bound."""
        import json
        import select

        for node in self.topology.wires():
            link = json.dumps(node.link.describe())
            p = self.popen(node.name, [sys.executable, "-m", WIRE_MODULE, "--left", "l", "--right", "r",
                                       "--link", link], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.delay_lines[node.name] = p
            ready, _, _ = select.select([p.stdout], [], [], WIRE_READY_TIMEOUT)
            line = p.stdout.readline() if ready else b""
            if line.strip() != b"ready":
                err = p.stderr.read(2000).decode(errors="replace").strip() if p.poll() is not None else ""
                last = err.splitlines()[-1] if err else repr(line)
                raise LabError(f"the delay line on {node.name} did not start: {last}")

    def _start_background(self) -> None:
        for side, rate in self.background.items():
            self.popen(
                f"bg_{side}",
                [sys.executable, "-m", "nattrav.lab.background", "--rate", str(rate)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )

    def down(self) -> None:
        """Stop every process the lab started, remove its namespaces and state. Safe to call twice."""
        with self._lock:
            if not self._is_up:
                return
            t0 = time.perf_counter()
            # SIGTERM / Ctrl-C can land while up() waits for the builder: let it finish, or the
            # namespaces it creates after this point would outlive the lab
            builder = getattr(self, "_builder", None)
            if builder is not None and builder is not threading.current_thread():
                builder.join(10)
            _stop(self._procs)
            self._procs.clear()
            self.delay_lines.clear()
            if self.id is not None:
                registry.destroy(registry.namespaces_of(self.id))
                registry.drop_state(self.id)
            registry.unregister(self)
            self._is_up = False
            self.timings["down"] = time.perf_counter() - t0

    @classmethod
    def attach(cls, lab_id: str) -> Lab:
        """A handle on a lab another process brought up (the CLI's `up` ... `exec` ... `down`)."""
        st = registry.read_state(lab_id)
        if st is None:
            raise LabError(f"no lab {lab_id!r}; `nattrav-lab list` shows the running ones")
        lab = cls(
            from_dict(st["left"]) or "none", from_dict(st["right"]) or "none",
            hosts_per_nat=st["hosts_per_nat"], background=st["background"] or None,
            second_server=st["second_server"], shape=shape_from_dict(st.get("shape")),
        )
        lab.id = lab_id
        lab.persistent = bool(st.get("persistent"))
        lab._is_up = True
        return lab

    def detach(self) -> None:
        """Leave the lab running after this process exits (marks it persistent)."""
        with self._lock:
            self.persistent = True
            self._procs.clear()
            registry.write_state(self.id, self._state())
            registry.unregister(self)

    def describe(self) -> dict:
        """Nodes with their namespace and addresses (the CLI's `up --json`)."""
        out = {"id": self.id, "nodes": {}, "S1": S1, "S2": S2, "low_ttl": self.low_ttl}
        for name, node in self.topology.nodes.items():
            out["nodes"][name] = {
                "kind": node.kind, "ns": self.ns(name) if self._is_up else None, "ip": node.ip,
                "ips": node.ips, "wan_ip": node.wan_ip,
                "spec": None if node.spec is None else node.spec.name,
            }
        return out


def _stop(procs: list[subprocess.Popen], grace: float = 1.0) -> None:
    """SIGTERM to each process group, SIGKILL to what still runs after `grace` seconds."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                p.kill()
            p.wait()


_swept = False


def _sweep_once() -> None:
    """The first lab of a process clears what crashed runs left behind (owner gone), best effort."""
    global _swept
    if _swept:
        return
    _swept = True
    try:
        registry.sweep()
    except OSError:
        pass
