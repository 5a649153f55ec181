"""`--version` for every command, one wording: "nattrav-server (nattrav 0.1.0)"."""

from __future__ import annotations

import argparse

from .._version import __version__


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s (nattrav {__version__})")


__all__ = ["add_version_flag"]
