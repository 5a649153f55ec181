"""Python face of the cffi-built C core (nattrav._core)."""

from .errors import check
from .limits import ensure_fd_capacity
from .packed import Burst, BurstStats, Hit, PackedBurst, RecvStats
from .pool import SocketPool

__all__ = ["Burst", "BurstStats", "Hit", "PackedBurst", "RecvStats", "SocketPool",
           "check", "ensure_fd_capacity"]
