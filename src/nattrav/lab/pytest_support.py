"""pytest helpers for anyone whose tests need the NAT lab (STUN, burst, rendezvous, ...).

    from nattrav.lab.pytest_support import lab_fixture, require_lab

    sym_lab = lab_fixture("symmetric-seq", "port-restricted", hosts_per_nat=2)   # module-scoped

    @pytest.mark.lab
    def test_something(sym_lab):
        sym_lab.run("a", [...])

Without root the lab tests skip with a loud reason, except in CI (env CI=true) where they fail: a CI run
that silently skipped every lab test would prove nothing.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import pytest

from . import netns
from .errors import LabError
from .lab import Lab
from .tools import preflight
from .registry import PREFIX, sweep


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_lab() -> None:
    """Skip (or, in CI, fail) the calling test when the lab cannot run on this machine."""
    try:
        preflight()
    except LabError as exc:
        msg = f"NAT LAB NOT AVAILABLE: {exc}"
        if in_ci():
            pytest.fail(msg + " (CI=true: lab tests must run, not skip)", pytrace=False)
        pytest.skip(msg + " -- these tests were NOT run")


def lab_or_skip(*args: Any, **kwargs: Any) -> Lab:
    """An up Lab, or skip/fail as require_lab() does. The caller owns down()."""
    require_lab()
    return Lab(*args, **kwargs).up()


@contextlib.contextmanager
def running_lab(*args: Any, responder: bool = False, **kwargs: Any) -> Iterator[Lab]:
    """`with running_lab(...) as lab:` an up Lab (skip/fail as require_lab() does), with the probes'
    responder on the server when `responder`, and down() however the block ends."""
    lab = lab_or_skip(*args, **kwargs)
    try:
        if responder:
            from .probe import start_responder

            start_responder(lab)
        yield lab
    finally:
        lab.down()


def lab_fixture(left="port-restricted", right="port-restricted", *, scope: str = "module", **kwargs: Any):
    """A pytest fixture giving one up Lab for the whole scope, torn down (and checked gone) after."""

    @pytest.fixture(scope=scope)
    def _lab():
        lab = lab_or_skip(left, right, **kwargs)
        try:
            yield lab
        finally:
            lab_id = lab.id
            lab.down()
            left_over = netns.list_names(f"{PREFIX}{lab_id}-")
            assert not left_over, f"lab {lab_id} left namespaces behind: {left_over}"

    return _lab


@pytest.fixture(scope="session")
def swept_lab_leftovers():
    """Session fixture: remove namespaces of crashed earlier runs (owner gone) before tests start."""
    try:
        preflight()
    except LabError:
        return []
    return sweep()
