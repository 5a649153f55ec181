"""Logging that can neither block nor kill a server.

A StreamHandler writes in the calling thread: a log pipe nobody reads (a paused `| less`, a stuck
collector) blocks the write once its 64 KiB buffer is full, and with it the whole Trio event loop
and every peer. A full disk makes each write fail, and logging's default reaction prints a
traceback per record to that same stderr. Here records are formatted in the caller and queued; one
daemon thread writes them. A full queue or a failing write drops records and counts them."""

from __future__ import annotations

import logging
import queue
import threading

QUEUE_RECORDS = 10_000  # ~1-2 MB of formatted records at most


class _QuietStreamHandler(logging.StreamHandler):
    """A stream handler whose write failures are counted, not reported (there is nowhere to)."""

    def __init__(self, stream, sink: LogSink):
        super().__init__(stream)
        self._sink = sink

    def handleError(self, record: logging.LogRecord) -> None:
        self._sink.dropped += 1


class LogSink(logging.Handler):
    """A logging handler that hands records to a writer thread (``start()``; ``stop()`` drains it)."""

    def __init__(self, stream, formatter: logging.Formatter, size: int = QUEUE_RECORDS):
        super().__init__()
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(size)
        self._out = _QuietStreamHandler(stream, self)
        self._out.setFormatter(formatter)
        self._thread = threading.Thread(target=self._write, name="nattrav-log", daemon=True)

    def start(self) -> LogSink:
        self._thread.start()
        return self

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # format now, in the caller: the record's arguments may change or die before the thread runs
            record.msg, record.args = record.getMessage(), None
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
        except Exception:
            self.dropped += 1

    def handleError(self, record: logging.LogRecord) -> None:
        self.dropped += 1

    def _write(self) -> None:
        while (record := self._queue.get()) is not None:
            self._out.handle(record)

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued, waiting at most `timeout` s (a stalled destination is abandoned)."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


__all__ = ["LogSink"]
