"""Python face of the cffi-built C core (nattrav._core)."""

from .errors import check
from .pool import SocketPool

__all__ = ["SocketPool", "check"]
