"""Secrets for the servers' command lines: read from a file or the environment, never from argv
(every local user can read a process's argv: ps, /proc/PID/cmdline)."""

from __future__ import annotations

import os
import stat
import sys

from ..errors import UsageError

MAX_SECRET = 4096


def read_secret(path: str | None, env_name: str, *, flag: str, min_len: int,
                environ: dict[str, str] | None = None, prog: str = "nattrav") -> bytes | None:
    """The file's bytes (surrounding whitespace removed), else the environment variable's, else None.
    UsageError names the flag or variable when the key is unreadable, too short or too long; a
    file others may read gets a warning on stderr."""
    env = os.environ if environ is None else environ
    if path is not None:
        try:
            with open(path, "rb") as f:
                secret = f.read(MAX_SECRET + 1).strip()
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise UsageError(f"{flag} {path}: {exc.strerror or exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(f"{prog}: warning: {path} is readable by other users (chmod 600 it)", file=sys.stderr)
        where = f"{flag} {path}"
    elif env.get(env_name):
        secret, where = env[env_name].strip().encode(), env_name
    else:
        return None
    if len(secret) < min_len or len(secret) > MAX_SECRET:
        raise UsageError(f"{where}: the key must be {min_len}..{MAX_SECRET} bytes, got {len(secret)} "
                         f"(e.g. `openssl rand -hex 32 > key`)")
    return secret


def on_argv(flag: str, file_flag: str, env_name: str) -> str:
    """The refusal for a secret given on the command line."""
    return (f"{flag} on the command line is readable by every local user (ps, /proc/PID/cmdline); put "
            f"the key in a file and pass {file_flag} FILE, or set {env_name}")


__all__ = ["on_argv", "read_secret"]
