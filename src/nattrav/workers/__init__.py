"""Worker processes for bursts: a Trio coordinator and msgpack over unix socketpairs."""

from ..core.packed import Burst, BurstStats, Hit
from .coordinator import Coordinator, open_coordinator

__all__ = ["Burst", "BurstStats", "Coordinator", "Hit", "open_coordinator"]
