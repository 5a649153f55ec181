"""Bringing labs up and down: speed, isolation, cleanup on every kind of exit, the sweep, bad input."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import trio

from nattrav.lab import PRESETS, Lab, LabError, netns, preflight, registry, sweep
from nattrav.lab import build as build_module
from nattrav.lab import tools as tools_module
from nattrav.lab.probe import observe, start_responder

lab_test = pytest.mark.lab


def ours(lab_id):
    return netns.list_names(f"nt-{lab_id}-")


def boom(x):
    raise ValueError(f"boom {x}")


def whoami(tag):
    # runs inside the namespace: report the addresses this process sees
    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    return tag, sorted(line.split()[3] for line in out.splitlines())


@lab_test
def test_up_and_down_are_fast_and_leave_nothing(need_lab):
    lab = Lab("symmetric-seq", "port-restricted")
    t0 = time.perf_counter()
    lab.up()
    t_up = time.perf_counter() - t0
    lab_id = lab.id
    names = ours(lab_id)
    assert len(names) == 6 and all(n.startswith(f"nt-{lab_id}-") for n in names)
    assert registry.read_state(lab_id)["pid"] == os.getpid()
    sleeper = lab.popen("server", ["sleep", "60"])
    t0 = time.perf_counter()
    lab.down()
    t_down = time.perf_counter() - t0
    assert t_up < 2.0 and t_down < 2.0, (t_up, t_down)
    assert ours(lab_id) == []
    assert registry.read_state(lab_id) is None
    assert sleeper.poll() is not None, "down() must stop the processes the lab started"
    lab.down()  # idempotent
    assert not lab.is_up
    with pytest.raises(LabError, match="not up"):
        lab.run("a", ["true"])


@lab_test
def test_with_block_cleans_up_on_exception(need_lab):
    with pytest.raises(RuntimeError, match="inside"):
        with Lab("full-cone", "none") as lab:
            lab_id = lab.id
            assert ours(lab_id)
            raise RuntimeError("inside")
    assert ours(lab_id) == []


@lab_test
def test_two_labs_at_once_are_isolated(need_lab):
    with Lab("symmetric-seq", "none") as one, Lab("port-restricted", "none") as two:
        assert one.id != two.id
        assert set(ours(one.id)).isdisjoint(ours(two.id))
        # same addresses in both, yet each answers only within its own lab
        start_responder(one)
        start_responder(two)
        o1 = one.call("a", observe, [(one.S1, 7000), (one.S2, 7000)])
        o2 = two.call("a", observe, [(two.S1, 7000), (two.S2, 7000)])
        assert o1["seen"][1][1] - o1["seen"][0][1] == 1  # sequential in lab one
        assert o2["seen"][0][1] == o2["seen"][1][1] == o2["local"]  # preserving in lab two


@lab_test
def test_run_call_and_popen_inside_namespaces(need_lab):
    with Lab("port-restricted", "none", hosts_per_nat=2, second_server=True) as lab:
        assert lab.ns("a") == f"nt-{lab.id}-a"
        assert lab.ip("a2") == "10.0.1.3" and lab.wan_ip("a2") == "203.0.113.10"
        cp = lab.run("server", ["ip", "-o", "-4", "addr"])
        assert "198.51.100.1/32" in cp.stdout and "198.51.100.2/32" in cp.stdout
        assert "198.51.100.3/32" in lab.run("server2", "ip -o -4 addr").stdout
        assert lab.call("a", whoami, "x") == ("x", ["10.0.1.2/32", "127.0.0.1/8"])
        with pytest.raises(ValueError, match="boom 7"):
            lab.call("b", boom, 7)
        with pytest.raises(LabError, match="picklable"):
            lab.call("a", lambda: 1)
        p = lab.popen("a", [sys.executable, "-c", "print('hi')"], stdout=subprocess.PIPE, text=True)
        assert p.communicate(timeout=10)[0] == "hi\n"
        assert lab.run("a", ["cat", "-"], input="piped").stdout == "piped"


@lab_test
async def test_trio_arun_and_acall(need_lab):
    lab = Lab("symmetric-seq", "symmetric-seq")
    await trio.to_thread.run_sync(lab.up)
    try:
        results = {}

        async def one(host):
            results[host] = await lab.acall(host, whoami, host)

        async with trio.open_nursery() as n:
            n.start_soon(one, "a")
            n.start_soon(one, "b")
        assert results["a"][1][0] == "10.0.1.2/32" and results["b"][1][0] == "10.0.2.2/32"
        cp = await lab.arun("nat_b", ["nft", "list", "tables"])
        assert cp.returncode == 0 and "nattrav" in cp.stdout
    finally:
        await trio.to_thread.run_sync(lab.down)
    assert ours(lab.id) == []


_CHILD = textwrap.dedent(
    """
    import sys, time
    from nattrav.lab import Lab
    lab = Lab("symmetric-seq", "port-restricted").up()
    lab.popen("server", ["sleep", "300"])
    print(lab.id, flush=True)
    time.sleep(300)
    """
)


# bench/matrix.py's way: labs come up in worker threads, where no signal handler can be set; the
# main thread installs the cleanup hooks first
_THREADED_CHILD = textwrap.dedent(
    """
    import concurrent.futures, time
    from nattrav.lab import Lab
    from nattrav.lab.registry import install_hooks
    install_hooks()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        lab = pool.submit(lambda: Lab("symmetric-seq", "port-restricted").up()).result()
        print(lab.id, flush=True)
        pool.submit(time.sleep, 300).result()
    """
)


def _default_signals() -> None:
    # A shell that starts a job in the background (`cmd &`, as CI runners and nohup do) gives it
    # SIGINT ignored, and children inherit that: Ctrl-C would never reach the lab. Start the child as
    # a terminal would, with the default dispositions, so the test measures the lab's own handling.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _spawn_lab_child(code: str = _CHILD):
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         preexec_fn=_default_signals)
    lab_id = p.stdout.readline().strip()
    assert lab_id and ours(lab_id), "child did not bring its lab up"
    return p, lab_id


@lab_test
@pytest.mark.parametrize("code", [_CHILD, _THREADED_CHILD], ids=["main-thread", "worker-thread"])
def test_sigterm_cleans_up(need_lab, code):
    p, lab_id = _spawn_lab_child(code)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=10)
    assert ours(lab_id) == []
    assert registry.read_state(lab_id) is None


@lab_test
def test_ctrl_c_cleans_up(need_lab):
    p, lab_id = _spawn_lab_child()
    p.send_signal(signal.SIGINT)  # KeyboardInterrupt -> atexit
    p.wait(timeout=10)
    assert ours(lab_id) == []


@lab_test
def test_sweep_removes_a_crashed_run_only(need_lab):
    p, dead_id = _spawn_lab_child()
    p.kill()  # SIGKILL: no chance to clean up
    p.wait(timeout=10)
    assert ours(dead_id), "a killed run leaves its namespaces behind"
    with Lab("none", "none") as alive:
        removed = sweep()
        # under xdist another process's first lab may have swept the dead run a moment earlier
        assert set(ours(dead_id)) == set()
        assert any(f"-{dead_id}-" in n for n in removed) or registry.read_state(dead_id) is None
        assert ours(alive.id), "sweep must not touch a live run"
        assert registry.read_state(dead_id) is None


@lab_test
def test_failed_up_leaves_nothing_half_built(need_lab, monkeypatch):
    monkeypatch.setattr(build_module, "render", lambda spec, **kw: "this is not nftables\n")
    lab = Lab("symmetric-seq", "none")
    with pytest.raises(LabError, match="bringing the lab up failed: .*nft"):
        lab.up()
    assert lab.id and ours(lab.id) == [] and registry.read_state(lab.id) is None


def test_not_root_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError) as ei:
        preflight()
    assert "needs root" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(LabError, match="needs root"):
        Lab().up()


def test_missing_tool_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(tools_module, "TOOL_PATH", "/nonexistent")
    with pytest.raises(LabError) as ei:
        preflight()
    assert "`ip` not found" in str(ei.value) and "apt-get install iproute2" in str(ei.value)


def test_cli_bad_input_is_one_line_without_traceback():
    p = subprocess.Popen([sys.executable, "-m", "nattrav.lab.cli", "up", "--left", "symmetric-seq-5000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "out of range" in lines[0] and "Traceback" not in err
    # nothing was built: no state file (hence no namespaces) was ever written by that process
    assert not [st for st in registry.all_states().values() if st.get("pid") == p.pid]


@lab_test
def test_cli_up_exec_list_down(need_lab):
    cli = [sys.executable, "-m", "nattrav.lab.cli"]
    cp = subprocess.run([*cli, "up", "--left", "symmetric-seq-2", "--right", "cgnat", "--json"],
                        capture_output=True, text=True, check=True)
    info = json.loads(cp.stdout)
    lab_id = info["id"]
    try:
        assert info["nodes"]["cgn_b"]["wan_ip"] == "203.0.113.20"
        assert ours(lab_id), "a lab from `up` outlives the CLI process"
        assert lab_id not in "".join(sweep()), "sweep leaves persistent labs alone"
        listed = json.loads(subprocess.run([*cli, "list", "--json"], capture_output=True, text=True).stdout)
        assert any(x["id"] == lab_id and x["persistent"] for x in listed["labs"])
        cp = subprocess.run([*cli, "exec", "--lab", lab_id, "b", "--", "ip", "-o", "-4", "addr"],
                            capture_output=True, text=True)
        assert cp.returncode == 0 and "10.0.2.2/32" in cp.stdout
    finally:
        cp = subprocess.run([*cli, "down", lab_id, "--json"], capture_output=True, text=True)
    assert cp.returncode == 0 and len(json.loads(cp.stdout)["removed"]) == 7
    assert ours(lab_id) == []


@lab_test
def test_a_forked_child_exiting_does_not_tear_down_the_parents_lab(need_lab):
    with Lab("symmetric-seq", "none") as lab:
        pid = os.fork()
        if pid == 0:  # child: what atexit / SIGTERM cleanup would do
            try:
                registry._down_all()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert len(ours(lab.id)) == 5 and lab.is_up


@lab_test
def test_cli_probe_json_and_sweep(need_lab):
    cli = [sys.executable, "-m", "nattrav.lab.cli"]
    cp = subprocess.run([*cli, "probe", "symmetric-seq-2", "--json", "--loss-count", "200"],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    for key in ("mapping", "filtering", "allocation", "delta", "hairpin", "tcp_unsolicited"):
        assert out["measured"][key] == out["expected"][key], (key, out["measured"])
    assert out["measured"]["delta"] == 2
    cp = subprocess.run([*cli, "probe", "symmetric-seq-2"], capture_output=True, text=True, timeout=60)
    assert "delta            2                2" in cp.stdout
    cp = subprocess.run([*cli, "sweep", "--json"], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0 and isinstance(json.loads(cp.stdout)["removed"], list)


@pytest.mark.parametrize("argv", [["up"], ["probe", "full-cone"], ["sweep"], ["down"], ["exec", "a", "--", "true"]])
def test_cli_without_root_says_so_in_one_line(monkeypatch, capsys, argv):
    from nattrav.lab import cli

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs root" in err[0]


def _root_view():
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        fwd = f.read().strip()
    with open("/proc/sys/net/netfilter/nf_conntrack_udp_timeout") as f:
        udp_timeout = f.read().strip()
    return names, tables, fwd, udp_timeout


@lab_test
def test_root_namespace_is_never_touched(need_lab):
    names0, tables0, fwd0, t0 = _root_view()
    # short timeouts: the per-namespace conntrack sysctls must not leak into the root namespace
    left, right = PRESETS["symmetric-seq"].with_timeout(5), PRESETS["full-cone"].with_timeout(5)
    with Lab(left, right, hosts_per_nat=2) as lab:
        names1, tables1, fwd1, t1 = _root_view()
        ifnames = {x for link in lab.topology.links for x in (link.a_if, link.b_if)}
        assert not (ifnames & (names1 - names0)), "a lab interface appeared in the root namespace"
        assert "nattrav" not in tables1 and (fwd1, t1) == (fwd0, t0)
    assert _root_view()[1:] == (tables0, fwd0, t0)
