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


def test_the_public_api_is_reexported_and_loaded_on_first_use():
    import subprocess
    import sys

    import nattrav.api
    import nattrav.errors
    from nattrav.proto.report import NatReport

    assert nattrav.connect is nattrav.api.connect and nattrav.listen_tcp is nattrav.api.listen_tcp
    assert nattrav.NatReport is NatReport and nattrav.Mapping.EIM == "EIM"
    assert set(nattrav.errors.__all__) <= set(nattrav.__all__)
    assert all(hasattr(nattrav, name) for name in nattrav.__all__)
    # a worker process imports the package too: the API (trio, the I/O layer) must not come with it
    code = "import sys, nattrav; print('nattrav.api' in sys.modules, 'trio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
