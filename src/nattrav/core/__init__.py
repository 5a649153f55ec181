"""Python face of the cffi-built C core (nattrav._core)."""

from .errors import check
from .limits import ensure_fd_capacity
from .plan import Burst, BurstStats, Hit, PackedPlan, RecvStats
from .pool import SocketPool

__all__ = ["Burst", "BurstStats", "Hit", "PackedPlan", "RecvStats", "SocketPool",
           "check", "ensure_fd_capacity"]
