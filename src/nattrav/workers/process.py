"""Worker processes: spawning one from the coordinator's own thread, awaiting its exit without
blocking the loop, saying why it ended, and a nursery that fails with the one error that matters."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..errors import WorkerError


def exit_reason(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class WorkerProcess:
    """A worker process spawned from the Trio thread itself.

    trio.lowlevel.open_process forks from a helper thread, and PR_SET_PDEATHSIG (the worker's guard
    against orphaning) fires when the *thread* that forked it exits: Trio retires idle helper threads
    after 10 s, which would SIGKILL healthy workers. Forking here ties the guard to the thread that
    runs the coordinator. Exit is awaited through a pidfd, so waiting never blocks the loop."""

    def __init__(self, cmd: list[str], pass_fds: tuple[int, ...]) -> None:
        self._popen = subprocess.Popen(cmd, pass_fds=pass_fds, stdin=subprocess.DEVNULL)
        self.pid = self._popen.pid
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        while self._popen.poll() is None:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
            else:
                await trio.sleep(0.01)
        self.close()
        return self._popen.returncode

    def kill(self) -> None:
        if self._popen.poll() is None:
            try:
                self._popen.kill()
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


@asynccontextmanager
async def fan_out() -> AsyncIterator[trio.Nursery]:
    """A nursery whose failure surfaces as the one exception that matters (a WorkerError first), not a
    group: callers of the coordinator catch WorkerDied, OSError, ValueError as such."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
        if not leaves:
            raise
        first = next((e for e in leaves if isinstance(e, WorkerError)), leaves[0])
        raise first from None
