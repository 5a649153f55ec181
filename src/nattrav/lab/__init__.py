"""The NAT lab: RFC 4787 NAT behaviours emulated with network namespaces and nftables.

    from nattrav.lab import Lab, NatSpec, PRESETS, LabError, sweep
    with Lab(left="symmetric-seq", right="port-restricted") as lab:
        lab.run("a", ["ping", "-c1", lab.S1])

See docs/lab.md.
"""

from .errors import LabError
from .inspection import Mapping, parse_conntrack
from .lab import Lab
from .tools import preflight
from .registry import sweep
from .spec import PRESETS, NatSpec, effective, resolve

__all__ = [
    "Lab", "LabError", "Mapping", "NatSpec", "PRESETS", "effective", "parse_conntrack", "preflight",
    "resolve", "sweep",
]
