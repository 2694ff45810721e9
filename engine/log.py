"""Logging set-up for the CLI: one line per event, on stderr."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]

LEVELS = ("critical", "error", "warning", "info", "debug")


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger("linkd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
