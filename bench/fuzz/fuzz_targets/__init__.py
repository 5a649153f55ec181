"""The fuzz targets, one module each; every module defines TARGET (a harness.Target).

Import a target with `load(name)`: run.py's child process does so inside atheris' instrumentation
block, so only the modules a target imports are instrumented.
"""

from __future__ import annotations

import importlib

NAMES = (
    "stun_codec",
    "stun_server",
    "stun_tcp_stream",
    "rv_frames",
    "rv_server",
    "rv_observe",
    "rv_beacon",
    "udp_report",
    "tcp_report",
    "worker_messages",
    "tcp_auth",
    "punch",
)


def load(name: str):
    if name not in NAMES:
        raise KeyError(f"no fuzz target {name!r}; targets: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}").TARGET
