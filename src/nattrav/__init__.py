"""nattrav: NAT traversal through symmetric NATs (two-server port prediction, low-TTL punching)."""

from ._version import __version__

__all__ = ["__version__"]
