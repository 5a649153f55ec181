"""Lab: bring a two-NAT topology up in network namespaces, run things inside it, tear it down."""

from __future__ import annotations

import ipaddress
import os
import pickle
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

from . import netns, registry
from .errors import LabError
from .nftables import TABLE, render, sysctls
from .spec import NatSpec, from_dict, resolve
from .topology import S1, S2, S3, Plan, build_plan, nat_chain

_TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
_TOOLS = {"ip": "iproute2", "nft": "nftables", "conntrack": "conntrack"}


def tool(name: str) -> str:
    found = shutil.which(name, path=_TOOL_PATH)
    if not found:
        pkg = _TOOLS.get(name, name)
        raise LabError(f"`{name}` not found: install it (apt-get install {pkg}) or run bash .ci/install")
    return found


def preflight() -> None:
    """The one-line reasons the lab cannot run here, checked before anything is built."""
    if sys.platform != "linux":
        raise LabError("the NAT lab needs Linux network namespaces; run it on Linux")
    if os.geteuid() != 0:
        raise LabError("the NAT lab needs root (network namespaces, nftables): run as root, e.g. with sudo")
    for name in _TOOLS:
        tool(name)


class Mapping(NamedTuple):
    """One NAT translation seen in conntrack (RFC 4787 words: inside endpoint -> public endpoint).
    A tuple, so `for proto, inside, outside, remote in lab.mappings("nat_a")` works too."""

    proto: str
    inside: tuple[str, int]
    outside: tuple[str, int]
    remote: tuple[str, int]


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


class Lab:
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
    ) -> None:
        self.left = resolve("none" if left is None else left)
        self.right = resolve("none" if right is None else right)
        self.background = _background_rates(background)
        self.hosts_per_nat = hosts_per_nat
        self.second_server = second_server
        self.plan: Plan = build_plan(
            self.left, self.right, hosts_per_nat=hosts_per_nat, background=self.background,
            second_server=second_server,
        )
        self.id: str | None = None
        self.persistent = False
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.RLock()
        self._is_up = False
        self.owner_pid: int | None = None
        self.timings: dict[str, float] = {}

    # ----- naming -------------------------------------------------------------------------------
    def _node(self, node: str):
        try:
            return self.plan.nodes[node]
        except KeyError:
            raise LabError(f"no node {node!r} in this lab; nodes: {', '.join(self.plan.nodes)}") from None

    def ns(self, node: str) -> str:
        self._node(node)
        if self.id is None or not self._is_up:
            raise LabError("the lab is not up: call lab.up() (or use `with Lab(...) as lab:`) first")
        return f"{registry.PREFIX}{self.id}-{node}"

    def ip(self, node: str) -> str:
        return self._node(node).ip

    def wan_ip(self, node: str) -> str:
        return self._node(node).wan_ip

    def nodes(self) -> list[str]:
        return list(self.plan.nodes)

    def nats(self, side: str | None = None) -> list[str]:
        return [n.name for n in self.plan.nats() if side is None or n.side == side]

    def spec(self, side_or_node: str) -> NatSpec | None:
        """The NatSpec of side "a"/"b" (or of the side a node is on)."""
        side = side_or_node if side_or_node in ("a", "b") else self._node(side_or_node).side
        return self.left if side == "a" else self.right

    # ----- TTL ------------------------------------------------------------------------------------
    def hops(self, src: str, dst: str) -> int:
        """Forwarding namespaces (IP hops) between two hosts."""
        return len(nat_chain(self.plan, src)) + 1 + len(nat_chain(self.plan, dst))

    def low_ttl_from(self, host: str) -> int:
        """The TTL with which a packet from `host` leaves all of its own NATs but dies in the router,
        before any NAT of the other side sees it."""
        self._node(host)
        return len(nat_chain(self.plan, host)) + 1

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
                netns.in_thread(self._build, started=lambda t: setattr(self, "_builder", t))
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

    def _build(self) -> None:
        from pyroute2 import IPRoute

        plan = self.plan
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fds: dict[str, int] = {}
        iprs: dict[str, Any] = {}
        try:
            for name, node in plan.nodes.items():
                nsname = self.ns(name)
                netns.create_here(nsname)
                fds[name] = os.open(netns.path(nsname), os.O_RDONLY)
                settings = {
                    "net/ipv6/conf/all/disable_ipv6": "1",
                    "net/ipv6/conf/default/disable_ipv6": "1",
                    "net/ipv4/conf/all/accept_redirects": "0",
                    "net/ipv4/conf/default/accept_redirects": "0",
                    "net/ipv4/conf/all/rp_filter": "0",
                    "net/ipv4/conf/default/rp_filter": "0",
                }
                if node.forwarding:
                    settings.update({
                        "net/ipv4/ip_forward": "1",
                        "net/ipv4/conf/all/send_redirects": "0",
                        "net/ipv4/conf/default/send_redirects": "0",
                    })
                _write_sysctls(settings)
                ipr = iprs[name] = IPRoute()
                ipr.link("set", index=1, state="up")
            # Distinct ifindexes on the two ends matter: the kernel treats a veth whose ifindex equals
            # its peer's as a non-urgent link event and activates its queue up to a second later. The
            # peer keeps an automatic (small) index, so an explicit one >= 100 here always differs.
            for k, link in enumerate(plan.links):
                iprs[link.a].link(
                    "add", ifname=link.a_if, kind="veth", index=100 + k,
                    peer={"ifname": link.b_if, "net_ns_fd": fds[link.b]},
                )
            index: dict[tuple[str, str], int] = {}

            def idx(node: str, ifname: str) -> int:
                key = (node, ifname)
                if key not in index:
                    index[key] = iprs[node].link_lookup(ifname=ifname)[0]
                return index[key]

            for a in plan.addrs:
                iprs[a.node].addr("add", index=idx(a.node, a.ifname), address=a.address, prefixlen=32)
            for link in plan.links:
                iprs[link.a].link("set", index=idx(link.a, link.a_if), state="up")
                iprs[link.b].link("set", index=idx(link.b, link.b_if), state="up")
            _wait_carrier(iprs, timeout=2.0)
            for r in plan.routes:
                ipr = iprs[r.node]
                dst = "0.0.0.0/0" if r.dst == "default" else r.dst
                if r.blackhole:
                    ipr.route("add", dst=dst, type="blackhole")
                elif r.gateway:
                    ipr.route("add", dst=dst, gateway=r.gateway, oif=idx(r.node, r.ifname))
                else:
                    ipr.route("add", dst=dst, oif=idx(r.node, r.ifname), scope=253)
            nft = tool("nft")
            for node in plan.nats():
                netns.enter(fds[node.name])
                ruleset = render(node.spec, wan_ip=node.wan_ip, lan_net=node.lan_net)
                subprocess.run([nft, "-f", "-"], input=ruleset, text=True, check=True, capture_output=True)
                _write_sysctls(sysctls(node.spec))
        finally:
            for ipr in iprs.values():
                ipr.close()
            for fd in fds.values():
                os.close(fd)
            try:
                netns.enter(home)
            finally:
                os.close(home)

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
            for p in self._procs:
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, signal.SIGTERM)
                    except (ProcessLookupError, PermissionError):
                        p.terminate()
            deadline = time.monotonic() + 1.0
            for p in self._procs:
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        p.kill()
                    p.wait()
            self._procs.clear()
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
            second_server=st["second_server"],
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

    # ----- running things inside ----------------------------------------------------------------
    def _argv(self, node: str, argv: Sequence[str] | str) -> list[str]:
        if isinstance(argv, str):
            argv = shlex.split(argv)
        if not argv:
            raise LabError("empty command")
        return [tool("ip"), "netns", "exec", self.ns(node), *argv]

    def run(self, node: str, argv, timeout: float = 30, input=None, *, text: bool = True, check: bool = False):
        """Run a command inside node's namespace; returns subprocess.CompletedProcess."""
        if input is not None and text and isinstance(input, bytes):
            text = False
        return subprocess.run(
            self._argv(node, argv), input=input, capture_output=True, timeout=timeout, text=text, check=check
        )

    async def arun(self, node: str, argv, timeout: float = 30, input=None, *, check: bool = False):
        """run() for Trio code; stdout/stderr are decoded to str."""
        import trio

        if isinstance(input, str):
            input = input.encode()
        with trio.fail_after(timeout):
            cp = await trio.run_process(
                self._argv(node, argv), stdin=input, capture_stdout=True, capture_stderr=True, check=check
            )
        return subprocess.CompletedProcess(
            cp.args, cp.returncode, cp.stdout.decode(errors="replace"), cp.stderr.decode(errors="replace")
        )

    def popen(self, node: str, argv, **kwargs) -> subprocess.Popen:
        """A long-lived process inside node's namespace; the lab stops it on down()."""
        kwargs.setdefault("start_new_session", True)
        p = subprocess.Popen(self._argv(node, argv), **kwargs)
        self._procs.append(p)
        return p

    def _call_argv(self, node: str) -> list[str]:
        return self._argv(node, [sys.executable, "-m", "nattrav.lab.callee"])

    @staticmethod
    def _call_payload(fn: Callable, args, kwargs) -> bytes:
        try:
            return pickle.dumps(list(sys.path)) + pickle.dumps((fn, args, kwargs))
        except Exception as exc:
            raise LabError(f"lab.call needs a picklable module-level callable and arguments: {exc}") from exc

    @staticmethod
    def _call_result(node: str, returncode: int, out: bytes, err: bytes):
        try:
            status, *rest = pickle.loads(out)
        except Exception:
            tail = err.decode(errors="replace")[-800:]
            raise LabError(f"lab.call in {node!r} died (exit {returncode}): {tail}") from None
        if status == "ok":
            return rest[0]
        exc, text = rest
        if isinstance(exc, BaseException):
            raise exc
        raise LabError(f"lab.call in {node!r} failed:\n{text}")

    def call(self, node: str, fn: Callable, *args, timeout: float = 60, **kwargs):
        """Run fn(*args, **kwargs) in a child process inside node's namespace; return its result or
        re-raise its exception. fn must be importable (module-level) and everything picklable."""
        payload = self._call_payload(fn, args, kwargs)
        cp = subprocess.run(self._call_argv(node), input=payload, capture_output=True, timeout=timeout)
        return self._call_result(node, cp.returncode, cp.stdout, cp.stderr)

    async def acall(self, node: str, fn: Callable, *args, timeout: float = 60, **kwargs):
        """call() for Trio code (several can run at once in a nursery)."""
        import trio

        payload = self._call_payload(fn, args, kwargs)
        with trio.fail_after(timeout):
            cp = await trio.run_process(
                self._call_argv(node), stdin=payload, capture_stdout=True, capture_stderr=True, check=False
            )
        return self._call_result(node, cp.returncode, cp.stdout, cp.stderr)

    # ----- NAT state (ground truth for tests and the predictor's hit rate) ------------------------
    def _nat_nodes(self, nat: str | None):
        if nat is None:
            return self.plan.nats()
        node = self._node(nat)
        if node.kind != "nat":
            raise LabError(f"{nat!r} is not a NAT; NATs here: {', '.join(self.nats()) or 'none'}")
        return [node]

    def flush_conntrack(self, nat: str | None = None) -> None:
        """Forget every mapping on all NATs (or one): conntrack and the lab's dynamic maps."""
        for node in self._nat_nodes(nat):
            self.run(node.name, [tool("conntrack"), "-F"], check=False)
            flush = "".join(
                f"flush {kind} ip {TABLE} {name}\n"
                for kind, name in (("map", "emap"), ("map", "pub"), ("set", "adf"))
            )
            # not every NAT has every map; flush what exists, one line at a time
            existing = self.run(node.name, [tool("nft"), "list", "table", "ip", TABLE]).stdout
            lines = [ln for ln in flush.splitlines() if f" {ln.split()[-1]} {{" in existing]
            if lines:
                self.run(node.name, [tool("nft"), "-f", "-"], input="\n".join(lines) + "\n", check=True)

    def mappings(self, nat: str, proto: str | None = None) -> list[Mapping]:
        """The NAT's current translations read from its conntrack table."""
        node = self._nat_nodes(nat)[0]
        argv = [tool("conntrack"), "-L"]
        if proto:
            argv += ["-p", proto]
        cp = self.run(node.name, argv)
        return parse_conntrack(cp.stdout, lan_net=node.lan_net)

    def counter(self, nat: str, name: str) -> int:
        """Packets counted by one of the ruleset's named counters (wan_in, wan_in_udp, wan_out,
        wan_out_udp, seq_alloc)."""
        node = self._nat_nodes(nat)[0]
        cp = self.run(node.name, [tool("nft"), "list", "counter", "ip", TABLE, name])
        m = re.search(r"packets (\d+)", cp.stdout)
        if cp.returncode != 0 or not m:
            raise LabError(f"no counter {name!r} on {nat}: {cp.stderr.strip()}")
        return int(m.group(1))

    def nat_state(self, nat: str) -> dict:
        """For a sequential NAT: how many ports it has handed out and the next one it will hand out."""
        from .nftables import seq_ports

        node = self._nat_nodes(nat)[0]
        spec = node.spec
        state = {"nat": nat, "allocation": spec.allocation, "mapping": spec.mapping, "wan_ip": node.wan_ip}
        if spec.allocation == "sequential":
            ports = seq_ports(spec.delta)
            n = self.counter(nat, "seq_alloc")
            state.update(delta=spec.delta, allocations=n, next_port=ports[n % len(ports)], base=ports[0])
        return state

    def describe(self) -> dict:
        """Nodes with their namespace and addresses (the CLI's `up --json`)."""
        out = {"id": self.id, "nodes": {}, "S1": S1, "S2": S2, "low_ttl": self.low_ttl}
        for name, node in self.plan.nodes.items():
            out["nodes"][name] = {
                "kind": node.kind, "ns": self.ns(name) if self._is_up else None, "ip": node.ip,
                "ips": node.ips, "wan_ip": node.wan_ip,
                "spec": None if node.spec is None else node.spec.name,
            }
        return out


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


def _wait_carrier(iprs: dict, timeout: float) -> None:
    """Until every veth reports operstate UP: before that its queue may still drop packets."""
    deadline = time.monotonic() + timeout
    while True:
        down = [
            f"{node}:{link.get_attr('IFLA_IFNAME')}"
            for node, ipr in iprs.items()
            for link in ipr.get_links()
            if link.get_attr("IFLA_IFNAME") != "lo" and link.get_attr("IFLA_OPERSTATE") != "UP"
        ]
        if not down:
            return
        if time.monotonic() > deadline:
            raise LabError(f"links did not come up within {timeout}s: {', '.join(down)}")
        time.sleep(0.005)


def _write_sysctls(settings: dict[str, str]) -> None:
    # /proc/sys/net resolves against the calling thread's namespace, so this thread's setns applies
    for key, value in settings.items():
        try:
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)
        except FileNotFoundError:
            if key.startswith("net/ipv6/"):
                continue  # a kernel booted without IPv6: nothing to switch off
            raise LabError(f"/proc/sys/{key} is missing: this kernel lacks a feature the lab needs") from None


_CT_FIELDS = re.compile(r"(src|dst|sport|dport)=(\S+)")


def parse_conntrack(text: str, *, lan_net: str) -> list[Mapping]:
    """`conntrack -L` lines -> Mappings (both outbound and dnat'ed inbound flows), others skipped."""
    net = ipaddress.ip_network(lan_net)

    def inside(addr: str) -> bool:
        try:
            return ipaddress.ip_address(addr) in net
        except ValueError:
            return False

    out: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("udp", "tcp"):
            continue
        vals = [v for _, v in _CT_FIELDS.findall(line)]
        if len(vals) < 8:
            continue
        try:
            osrc, odst, osport, odport, rsrc, rdst, rsport, rdport = vals[:8]
            osport, odport, rsport, rdport = int(osport), int(odport), int(rsport), int(rdport)
        except ValueError:
            continue
        if inside(osrc):
            out.append(Mapping(parts[0], (osrc, osport), (rdst, rdport), (odst, odport)))
        elif inside(rsrc):
            out.append(Mapping(parts[0], (rsrc, rsport), (odst, odport), (osrc, osport)))
    return out
