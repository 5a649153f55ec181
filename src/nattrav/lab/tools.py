"""The system tools the lab drives, and the one-line reasons it cannot run on this machine."""

from __future__ import annotations

import os
import shutil
import sys

from .errors import LabError

TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
TOOLS = {"ip": "iproute2", "nft": "nftables", "conntrack": "conntrack"}


def tool(name: str) -> str:
    """Absolute path of a system tool, or a LabError that says which package brings it."""
    found = shutil.which(name, path=TOOL_PATH)
    if not found:
        pkg = TOOLS.get(name, name)
        raise LabError(f"`{name}` not found: install it (apt-get install {pkg}) or run bash .ci/install")
    return found


def preflight() -> None:
    """The one-line reasons the lab cannot run here, checked before anything is built."""
    if sys.platform != "linux":
        raise LabError("the NAT lab needs Linux network namespaces; run it on Linux")
    if os.geteuid() != 0:
        raise LabError("the NAT lab needs root (network namespaces, nftables): run as root, e.g. with sudo")
    for name in TOOLS:
        tool(name)
