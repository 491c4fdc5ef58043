"""What a run shows on the terminal: log messages on stderr (set up by the command only) and progress bars.

The library only logs through `logging.getLogger(__name__)` loggers under "cfa_anomaly"; nothing here runs on
import. Used as a library without any logging set up, its warnings still reach stderr (Python's last-resort
handler) and its progress messages stay silent.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

PACKAGE_LOGGER = "cfa_anomaly"
HANDLER_NAME = "cfa_anomaly.console"
SERVER_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
T = TypeVar("T")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each message (a redirected or captured stream)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


class _PlainFormatter(logging.Formatter):
    """Progress as plain lines; warnings and errors start with their level ("WARNING: ...")."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname}: {message}"


def configure_logging(level: int = logging.INFO, timestamps: bool = False) -> None:
    """Show the package's messages from `level` up on stderr; called once per command (again: replaced).

    timestamps: the long-running service's format (time, level, logger) instead of plain lines.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(logging.Formatter(SERVER_FORMAT) if timestamps else _PlainFormatter("%(message)s"))
    root.addHandler(handler)
    logging.getLogger(PACKAGE_LOGGER).setLevel(level)


def progress(items: Iterable[T], desc: str, unit: str, initial: int = 0, total: int | None = None) -> tqdm[T]:
    """A tqdm bar over items: on a terminal only, never when the package logger is set above INFO (cfa -q)."""
    quiet = logging.getLogger(PACKAGE_LOGGER).level > logging.INFO
    return tqdm(items, desc=desc, unit=unit, initial=initial, total=total, leave=False,
                disable=True if quiet else None)
