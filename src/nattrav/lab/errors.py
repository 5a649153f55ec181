"""The lab's one error type: every failure a person can fix is a LabError with a one-line message."""

from __future__ import annotations


class LabError(Exception):
    """Something about the lab's input or the machine is wrong; str(err) says what and how to fix it."""
