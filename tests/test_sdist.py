"""The release path a new user takes (issue 16): `python -m build` on a clean copy of the sources
makes an sdist and an abi3 wheel, `pip install dist/*.tar.gz` in a clean venv compiles the C core
from the sdist alone, and the installed package works. Skips only when `build` cannot be installed."""

import pathlib
import shutil
import subprocess
import sys
import tarfile
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

SMOKE = r"""
import json, socket, sys
import trio
import nattrav
from nattrav import _core
from nattrav.core.pool import SocketPool
from nattrav.io.stun_client import binding
from nattrav.io.stun_server import serve_stun
from nattrav.proto.stun_server import StunServerConfig

async def main():
    # the C core answers a STUN request on loopback, and the pool opens real sockets through it
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    p1 = s.getsockname()[1]; s.close()
    async with trio.open_nursery() as n:
        await n.start(serve_stun, StunServerConfig(ip="127.0.0.1", port=p1, alt_port=0))
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        r = await binding(sock, ("127.0.0.1", p1), timeout=3)
        assert r.mapped == sock.getsockname(), r.mapped
        n.cancel_scope.cancel()
    with SocketPool(4, "127.0.0.1") as pool:
        ports = list(pool.ports)
    print(json.dumps({"version": nattrav.__version__, "core": _core.__file__, "ports": ports,
                      "typed": (__import__("pathlib").Path(nattrav.__file__).parent / "py.typed").exists()}))

trio.run(main)
"""


def _venv(path: pathlib.Path) -> pathlib.Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)


def _sources(dest: pathlib.Path) -> None:
    """The files a fresh clone has (tracked, plus new ones not yet committed and not ignored)."""
    names = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout.split()
    for name in names:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a C compiler")
def test_sdist_builds_installs_and_runs_in_a_clean_venv(tmp_path):
    tools = _venv(tmp_path / "tools")
    got = _run([tools, "-m", "pip", "install", "-q", "build"])
    if got.returncode != 0:
        pytest.skip(f"`build` cannot be installed here: {got.stderr.strip()[-300:]}")
    src = tmp_path / "src"
    _sources(src)
    built = _run([tools, "-m", "build", "--outdir", tmp_path / "dist", src])
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    sdist = next((tmp_path / "dist").glob("nattrav-*.tar.gz"))
    wheel = next((tmp_path / "dist").glob("nattrav-*.whl"))
    # one wheel for every CPython >= 3.11: the stable ABI, and tagged so
    assert "-cp311-abi3-linux_" in wheel.name, wheel.name
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"build_ext.py", "csrc/nattrav_core.h", "csrc/msg.h", "LICENSE", "src/nattrav/py.typed"} <= names

    # a new user's install: only the sdist, in a venv that has never seen nattrav
    py = _venv(tmp_path / "user")
    inst = _run([py, "-m", "pip", "install", "-q", sdist])
    assert inst.returncode == 0, inst.stderr[-3000:]
    smoke = _run([py, "-c", SMOKE], cwd=tmp_path)  # not from the source tree: the installed copy
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    out = __import__("json").loads(smoke.stdout.strip().splitlines()[-1])
    assert str(tmp_path / "user") in out["core"] and out["core"].endswith(".abi3.so")
    assert len(out["ports"]) == 4 and all(out["ports"]) and out["typed"]
    for command in ("nattrav-fast", "nattrav-server", "nattrav-stun", "nattrav-lab"):
        v = _run([tmp_path / "user" / "bin" / command, "--version"])
        assert v.returncode == 0 and v.stdout.strip() == f"{command} (nattrav {out['version']})", v
    # the lab is an extra: the package itself does not pull pyroute2 in; psutil it needs (the
    # coordinator's CPU count)
    listed = _run([py, "-m", "pip", "list", "--format=freeze"]).stdout.lower()
    assert "pyroute2" not in listed and "psutil" in listed
    # the metadata says what it runs on
    meta = _run([py, "-c", "import importlib.metadata as m; print(m.metadata('nattrav').as_string())"]).stdout
    assert "Classifier: Operating System :: POSIX :: Linux" in meta and "License-Expression: MIT" in meta
