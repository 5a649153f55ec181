"""cffi out-of-line API build of nattrav._core.

The cdef is cut out of csrc/nattrav_core.h between the NATTRAV_CDEF_BEGIN/END markers, so the header is
the only place the C interface is written down.
"""

from __future__ import annotations

import pathlib
import re
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CSRC = "csrc"
HEADER = HERE / CSRC / "nattrav_core.h"


def read_cdef(header: pathlib.Path = HEADER) -> str:
    text = header.read_text()
    match = re.search(r"NATTRAV_CDEF_BEGIN\s*\*/(.*?)/\*\s*NATTRAV_CDEF_END", text, re.S)
    if match is None:
        raise RuntimeError(f"{header}: no NATTRAV_CDEF_BEGIN/END block")
    return match.group(1)


def c_sources() -> list[str]:
    # setuptools insists on paths relative to the project root
    return sorted(str(p.relative_to(HERE)) for p in (HERE / CSRC).glob("*.c"))


if not sys.platform.startswith("linux"):
    # say it before the compiler fails on sendmmsg/recvmmsg/IP_RECVERR half-way through
    raise SystemExit(f"nattrav builds on Linux only (sendmmsg, recvmmsg, IP_RECVERR, pidfd); this is {sys.platform}")

ffibuilder = FFI()
ffibuilder.cdef(read_cdef() + read_cdef(HERE / CSRC / "frames.h"))  # frames.c: the punched path's batches
ffibuilder.set_source(
    "nattrav._core",
    '#include "nattrav_core.h"\n#include "frames.h"',
    sources=c_sources(),
    include_dirs=[CSRC],
    libraries=["m"],  # the delay line draws jitter with sqrt/log/cos
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
