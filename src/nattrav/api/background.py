"""One call running beside the caller's code: `async with running(fn, ...) as job:` starts fn, the
body goes on (the rendezvous connection, say), `await job.result()` waits for fn's value or raises
fn's own exception. Leaving the block cancels fn if it is still running; a value nobody took is
handed to `unclaimed` (an opened socket must be closed, not leaked).

Exceptions come out as they were raised, never wrapped in an ExceptionGroup: callers `except
ConnectError` as with a plain await.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")


class Job(Generic[T]):
    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self.claimed = False

    async def _run(self, fn: Callable[..., Awaitable[T]], args: tuple) -> None:
        try:
            self._value = await fn(*args)
        except Exception as exc:  # handed to whoever awaits result(); Cancelled passes through
            self._error = exc
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> None:
        """Until fn has returned or raised (without taking its result)."""
        await self._done.wait()

    def peek(self) -> T | None:
        """fn's value once it returned (None before, or when it raised), without taking it: whoever
        calls result() still owns it, and an unclaimed one is still handed to `unclaimed`."""
        return self._value if self.done and self._error is None else None

    async def result(self) -> T:
        await self._done.wait()
        self.claimed = True
        if self._error is not None:
            raise self._error
        return self._value


@asynccontextmanager
async def running(fn: Callable[..., Awaitable[T]], *args: Any,
                  unclaimed: Callable[[T], None] | None = None) -> AsyncIterator[Job[T]]:
    job: Job[T] = Job()
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(job._run, fn, args)
        try:
            yield job
        except BaseException as exc:
            body_error = exc
        finally:
            nursery.cancel_scope.cancel()
    if job.done and not job.claimed and job._error is None and unclaimed is not None:
        unclaimed(job._value)
    if body_error is not None:
        raise body_error


__all__ = ["Job", "running"]
