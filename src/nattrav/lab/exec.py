"""Running things inside a lab's namespaces: commands, long-lived processes, Python callables.

Everything goes through `ip netns exec`, so whatever works on the command line works here. A mixin of
Lab: it needs only `ns(node)` (the namespace name) and `_procs` (what down() stops).
"""

from __future__ import annotations

import pickle
import shlex
import subprocess
import sys
from typing import Callable, Sequence

from . import registry
from .errors import LabError
from .tools import tool


class Exec:
    _procs: list[subprocess.Popen]

    def ns(self, node: str) -> str:  # pragma: no cover - provided by Lab
        raise NotImplementedError

    def _argv(self, node: str, argv: Sequence[str] | str) -> list[str]:
        if isinstance(argv, str):
            argv = shlex.split(argv)
        if not argv:
            raise LabError("empty command")
        ns = self.ns(node)
        return [tool("ip"), "netns", "exec", ns, "env", f"XDG_CACHE_HOME={registry.cache_home(ns)}", *argv]

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
