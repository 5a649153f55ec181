"""The coordinator and its workers over loopback: real ports, every packet exactly once, the first hit,
the punched socket handed over, and dead or hung workers failing the attempt cleanly."""

import os
import signal
import socket
import time

import psutil
import pytest
import trio

from nattrav.errors import WorkerDied, WorkerError
from nattrav.workers import Burst, open_coordinator

IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)


def make_sink():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


async def collect(s, expect, timeout=3.0):
    out = []
    with trio.move_on_after(timeout):
        while len(out) < expect:
            await trio.lowlevel.wait_readable(s)
            while True:
                try:
                    data, anc, _, src = s.recvmsg(2048, 64)
                except BlockingIOError:
                    break
                ttl = next((int.from_bytes(d[:4], "little") for lvl, t, d in anc if t == socket.IP_TTL), None)
                out.append((data, src, ttl))
    return out


@pytest.mark.parametrize("impl", ["c", "py"])
async def test_open_fire_listen_take(impl):
    sink = make_sink()
    async with open_coordinator(2, impl=impl) as coord:
        pids = coord.worker_pids
        ports = await coord.open_sockets(300, "127.0.0.1")
        assert len(ports) == 300 == len(set(ports)) == coord.count
        # the ports are really bound: nobody else can take them
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", ports[299]))
        probe.close()
        assert {coord.owner_of(0), coord.owner_of(299)} == {0, 1}

        tokens = [b"T%05d" % i for i in range(300)]
        n = await coord.fire(Burst(range(300), "127.0.0.1", [sink.getsockname()[1]] * 300, tokens))
        assert n == 300 and coord.last_fire.planned == 300 and coord.last_fire.failed == 0
        got = await collect(sink, 300)
        assert sorted(d for d, _, _ in got) == tokens  # each exactly once
        assert all(tokens[ports.index(src[1])] == d for d, src, _ in got)

        async def answer():
            await trio.sleep(0.1)
            sink.sendto(b"noise", ("127.0.0.1", ports[5]))
            sink.sendto(b"WIN!x", ("127.0.0.1", ports[250]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            hit = await coord.listen(b"WIN!", timeout=5)
        assert hit.index == 250 and hit.payload == b"WIN!x" and hit.src == sink.getsockname()
        assert await coord.listen(b"WIN!", timeout=0.05) is None

        s = await coord.take_socket(250)
        assert s.getsockname() == ("127.0.0.1", ports[250])
        await s.sendto(b"from-taken", sink.getsockname())
        (d, src, _), = await collect(sink, 1)
        assert d == b"from-taken" and src[1] == ports[250]
        with pytest.raises(IndexError):
            await coord.take_socket(250)
        with pytest.raises(IndexError):
            await coord.fire(Burst([250], "127.0.0.1", [9], b"x"))
        stats = await coord.recv_stats()
        assert stats.rejected >= 1
    # workers are gone, their sockets closed; the taken one is ours and still open
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    rebind = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rebind.bind(("127.0.0.1", ports[0]))
    rebind.close()
    assert s.getsockname()[1] == ports[250]
    s.close()
    sink.close()


async def test_set_ttl_and_burst_ttl_reach_the_wire():
    sink = make_sink()
    port = sink.getsockname()[1]
    async with open_coordinator(2) as coord:
        await coord.open_sockets(4, "127.0.0.1")
        await coord.set_ttl([0, 3], 5)
        await coord.fire(Burst(range(4), "127.0.0.1", [port] * 4, [b"a", b"b", b"c", b"d"]))
        got = {d: ttl for d, _, ttl in await collect(sink, 4)}
        assert got == {b"a": 5, b"b": 64, b"c": 64, b"d": 5}
        await coord.fire(Burst(range(4), "127.0.0.1", [port] * 4, b"z", ttl=2))
        assert [ttl for _, _, ttl in await collect(sink, 4)] == [2, 2, 2, 2]
        await coord.set_ttl([0, 3], None)
        await coord.fire(Burst([0], "127.0.0.1", [port], b"q"))
        assert (await collect(sink, 1))[0][2] == 64
    sink.close()


async def test_paced_burst_across_workers_adds_up_to_the_rate():
    sink = make_sink()
    async with open_coordinator(2) as coord:
        await coord.open_sockets(2, "127.0.0.1")
        burst = Burst([0, 1] * 500, "127.0.0.1", [sink.getsockname()[1]] * 1000, b"p", rate=5000)
        t = time.perf_counter()
        assert await coord.fire(burst) == 1000
        took = time.perf_counter() - t
        assert 0.18 < took < 1.0  # 1000 packets at 5000/s is 0.2 s, whichever worker sends them
    sink.close()


async def test_killed_worker_fails_the_burst_cleanly():
    async with open_coordinator(2, reply_timeout=5) as coord:
        await coord.open_sockets(4, "127.0.0.1")
        victim = coord.worker_pids[1]
        plan = Burst([0, 1, 2, 3] * 1000, "127.0.0.1", [9] * 4000, b"k", rate=2000)  # ~2 s

        async def kill_soon():
            await trio.sleep(0.3)
            os.kill(victim, signal.SIGKILL)

        t = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_soon)
            with pytest.raises(WorkerDied) as info:
                await coord.fire(plan)
        assert time.monotonic() - t < 4
        assert "SIGKILL" in str(info.value) and "'fire'" in str(info.value)
        # the dead worker stays dead; calls that need it say so at once
        with pytest.raises(WorkerDied):
            await coord.take_socket(3)
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE


async def test_hung_worker_is_detected_and_killed():
    async with open_coordinator(1, reply_timeout=0.5) as coord:
        await coord.open_sockets(2, "127.0.0.1")
        pid = coord.worker_pids[0]
        os.kill(pid, signal.SIGSTOP)
        t = time.monotonic()
        with pytest.raises(WorkerError) as info:
            await coord.set_ttl([0], 3)
        assert 0.4 < time.monotonic() - t < 3
        assert "did not answer 'set_ttl'" in str(info.value)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_hung_worker_fails_a_two_worker_fire_and_the_other_stays_in_step():
    # both requests go out before either reply is awaited: the live worker sends its share, the hung
    # one is killed at the deadline, and the live worker's channel stays usable (its next reply is the
    # next fire's, not a stale one)
    sink = make_sink()
    port = sink.getsockname()[1]
    async with open_coordinator(2, reply_timeout=0.5) as coord:
        await coord.open_sockets(4, "127.0.0.1")
        assert [coord.owner_of(i) for i in range(4)] == [0, 0, 1, 1]
        hung = coord.worker_pids[1]
        os.kill(hung, signal.SIGSTOP)
        with pytest.raises(WorkerError) as info:
            await coord.fire(Burst([0, 2], "127.0.0.1", [port] * 2, [b"live", b"hung"]))
        assert "did not answer 'fire'" in str(info.value) and info.value.pid == hung
        assert [d for d, _, _ in await collect(sink, 1, timeout=1)] == [b"live"]
        assert await coord.fire(Burst([0, 1, 1], "127.0.0.1", [port] * 3, [b"a", b"b", b"c"])) == 3
        assert coord.last_fire.planned == 3 and coord.last_fire.syscalls == 2
        assert sorted(d for d, _, _ in await collect(sink, 3)) == [b"a", b"b", b"c"]
    sink.close()


async def test_fires_reach_the_owners_of_sockets_opened_in_several_calls():
    # each open_sockets call splits its sockets into one block a worker; a fire asks exactly the
    # workers whose blocks its index range meets, and the shares still add up
    sink = make_sink()
    port = sink.getsockname()[1]
    async with open_coordinator(2) as coord:
        await coord.open_sockets(4, "127.0.0.1")
        await coord.open_sockets(2, "127.0.0.1")
        assert [coord.owner_of(i) for i in range(6)] == [0, 0, 1, 1, 0, 1]
        for idx in ([4], [5], [1, 4], [0, 5], [3, 4, 5]):
            n = await coord.fire(Burst(idx, "127.0.0.1", [port] * len(idx), [b"s%d" % i for i in idx]))
            assert n == len(idx) == coord.last_fire.planned and coord.last_fire.failed == 0
            assert sorted(d for d, _, _ in await collect(sink, len(idx))) == sorted(b"s%d" % i for i in idx)
    sink.close()


async def test_open_failure_is_all_or_nothing_and_reported():
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    busy = taken.getsockname()[1]
    async with open_coordinator(2) as coord:
        with pytest.raises(OSError) as info:
            await coord.open_sockets(4, "127.0.0.1", ports=[0, 0, 0, busy])
        assert "Address already in use" in str(info.value)
        assert coord.count == 0
        ports = await coord.open_sockets(4, "127.0.0.1")
        assert len(ports) == 4 and coord.count == 4
    taken.close()


async def test_listen_cancelled_from_outside_leaves_workers_usable():
    sink = make_sink()
    async with open_coordinator(2) as coord:
        ports = await coord.open_sockets(4, "127.0.0.1")
        with trio.move_on_after(0.1):
            await coord.listen(b"never", timeout=10)
        sink.sendto(b"later", ("127.0.0.1", ports[3]))
        hit = await coord.listen(b"later", timeout=3)
        assert hit is not None and hit.index == 3
        assert await coord.fire(Burst([0, 3], "127.0.0.1", [sink.getsockname()[1]] * 2, b"ok")) == 2
    sink.close()


async def test_bad_arguments():
    with pytest.raises(ValueError):
        async with open_coordinator(0):
            pass
    async with open_coordinator(1) as coord:
        with pytest.raises(ValueError):
            await coord.open_sockets(2, "127.0.0.1", ports=[1])
        await coord.open_sockets(2, "127.0.0.1")
        with pytest.raises(IndexError):
            await coord.fire(Burst([2], "127.0.0.1", [1], b"x"))
        with pytest.raises(ValueError):
            await coord.set_ttl([0], 300)
        with pytest.raises(ValueError):
            await coord.listen("str", 1)


async def test_big_plan_arrives_whole_and_is_sent_exactly_once():
    # a plan of ~700 kB crosses the socketpair in many reads; the worker must wait for all of it
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel drops; senders never wait
    sink.bind(("127.0.0.1", 0))
    n = 65536
    async with open_coordinator(2) as coord:
        await coord.open_sockets(64, "127.0.0.1")
        plan = Burst([i % 64 for i in range(n)], "127.0.0.1", [sink.getsockname()[1]] * n,
                     [b"%08d" % i for i in range(n)])
        assert await coord.fire(plan) == n
        st = coord.last_fire
        assert (st.planned, st.sent, st.failed) == (n, n, 0)
    sink.close()


async def test_worker_that_cannot_start_says_why():
    with pytest.raises(WorkerError) as info:
        async with open_coordinator(1, netns="nt-no-such-namespace-x"):
            pass
    assert "worker start failed" in str(info.value) and "nt-no-such-namespace-x" in str(info.value)


def test_no_orphans_when_the_coordinator_process_is_killed():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys, trio
        from nattrav.workers import open_coordinator
        async def main():
            async with open_coordinator(2) as coord:
                await coord.open_sockets(8, "127.0.0.1")
                print(*coord.worker_pids, flush=True)
                await trio.sleep(60)
        trio.run(main)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
        proc.kill()
        proc.wait(10)
        procs = []
        for p in pids:
            try:
                procs.append(psutil.Process(p))
            except psutil.NoSuchProcess:
                pass
        gone, alive = psutil.wait_procs(procs, timeout=5)
        assert not alive, f"orphaned workers: {alive}"
    finally:
        proc.kill()
        proc.wait()


async def test_workers_outlive_trios_idle_helper_threads():
    # Trio retires an idle helper thread after 10 s; a worker forked from one would get its
    # parent-death signal then. Workers are forked from the coordinator's own thread instead.
    sink = make_sink()
    async with open_coordinator(2) as coord:
        await coord.open_sockets(2, "127.0.0.1")
        await trio.to_thread.run_sync(time.sleep, 0.01)  # a helper thread exists and goes idle
        await trio.sleep(11)
        assert all(psutil.pid_exists(p) for p in coord.worker_pids)
        assert await coord.fire(Burst([0, 1], "127.0.0.1", [sink.getsockname()[1]] * 2, b"alive")) == 2
    sink.close()


async def test_pinned_workers_run_on_one_cpu_each():
    cpus = sorted(os.sched_getaffinity(0))
    async with open_coordinator(2, pin=True) as coord:
        got = [psutil.Process(p).cpu_affinity() for p in coord.worker_pids]
    assert got == [[cpus[0]], [cpus[1 % len(cpus)]]]


async def test_take_right_after_a_cancelled_listen_gets_its_socket():
    # the stale listen reply and the take reply (with its descriptor) may come in one read
    async with open_coordinator(1) as coord:
        ports = await coord.open_sockets(20, "127.0.0.1")
        for i in range(20):
            with trio.move_on_after(0.005):
                await coord.listen(b"never", timeout=10)
            s = await coord.take_socket(i)
            assert s.getsockname()[1] == ports[i]
            s.close()


def test_fd_limit_in_a_worker_arrives_as_fd_limit_error():
    import subprocess
    import sys
    import textwrap

    # workers inherit the coordinator's limits; run in a child whose hard limit is low
    code = textwrap.dedent("""
        import resource, trio
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))
        from nattrav.errors import FdLimitError
        from nattrav.workers import open_coordinator
        async def main():
            async with open_coordinator(1) as coord:
                try:
                    await coord.open_sockets(1000, "127.0.0.1")
                except FdLimitError as e:
                    print("FdLimitError", e.errno, "ulimit -n" in str(e))
                print("after", len(await coord.open_sockets(10, "127.0.0.1")))
        trio.run(main)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["FdLimitError", "24", "True", "after", "10"]


def test_default_worker_count_is_the_cpus_this_process_may_use():
    """taskset/cpusets shrink what a process may use; psutil's cpu_affinity() follows them, while
    cpu_count() names every CPU of the machine."""
    import os

    from nattrav.workers.coordinator import usable_cpus

    assert usable_cpus() == sorted(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cpus() == [min(before)]
    finally:
        os.sched_setaffinity(0, before)
