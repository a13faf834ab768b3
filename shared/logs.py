"""Structured logs for every Stowage process: key=value (or JSON) lines on stderr, never on stdout.

stdout belongs to command output (``discover --format json`` pipes into other tools).
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(*, json: bool = False, level: int = logging.INFO) -> None:
    """Route structlog to stderr with timestamps and levels; JSON when ``json``."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True
        )
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Resolve sys.stderr per logger, so a replaced stderr (tests, daemons) is honoured.
        logger_factory=lambda *_: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
