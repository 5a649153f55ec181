import re

import nattrav


def test_version_is_exposed():
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", nattrav.__version__)


def test_extension_is_built_and_loads():
    from nattrav import _core

    assert hasattr(_core.lib, "nt_pool_open")
    assert _core.ffi.sizeof("uint16_t") == 2


def test_cdef_comes_from_the_single_header():
    import pathlib

    import build_ext  # noqa: PLC0415 - build script at the project root

    header = (pathlib.Path(build_ext.__file__).parent / "csrc" / "nattrav_core.h").read_text()
    cdef = build_ext.read_cdef()
    assert "nt_pool_open" in cdef and cdef in header
