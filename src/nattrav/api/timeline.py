"""When each phase of one session happened: connect()/listen() pass every progress event through a
Timeline on its way to the caller's on_event, and the path they yield carries what it saw
(`path.timings`, `path.events`), so an experiment reads the phase timings off the path instead of
re-deriving them from its own callback."""

from __future__ import annotations

from typing import Any

import trio

from .endpoint import EventHook

MAX_EVENTS = 256  # a session's event log is kept this long (a listener's refusals could be many)

# (name, first phase, last phase): a span is the time from the first event of one to that of the other
SPANS = (
    ("discovery", "discovery", "discovery-done"),
    ("mapping", "discovery-done", "mapping"),
    ("rendezvous", "rendezvous-connect", "plan"),
    ("punch", "punch", "connected"),  # the plan fired (the agreed start's wait included) to the path
    ("wait_start", "punch", "attempt"),
    ("first_attempt", "attempt", "connected"),  # our first packet to the path (absent when the peer's came first)
    ("total", "start", "connected"),
)


class Timeline:
    """Passes events on to `hook` (if any) and notes when each phase was first seen, in seconds
    from the Timeline's creation."""

    def __init__(self, hook: EventHook | None) -> None:
        self.hook = hook
        self.t0 = trio.current_time()
        self.first: dict[str, float] = {"start": 0.0}
        self.events: list[tuple[float, str, dict[str, Any]]] = []

    def emit(self, phase: str, detail: dict[str, Any]) -> None:
        at = round(trio.current_time() - self.t0, 6)
        self.first.setdefault(phase, at)
        if len(self.events) < MAX_EVENTS:
            self.events.append((at, phase, detail))
        if self.hook is not None:
            self.hook(phase, detail)

    def spans(self) -> dict[str, float]:
        """Seconds each phase took (only those whose two ends were seen)."""
        return {name: round(self.first[b] - self.first[a], 6) for name, a, b in SPANS
                if a in self.first and b in self.first and self.first[b] >= self.first[a]}

    def attach(self, path: Any) -> None:
        """Give the path its session's timings: `timings` (spans and each phase's first time) and
        `events` ((seconds, phase, detail) in order)."""
        path.timings = {"spans": self.spans(), "first": dict(self.first)}
        path.events = list(self.events)
