"""Structured logging: one JSON object per line on stderr, for journald and log shippers."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

# Attributes every LogRecord has; anything else passed through `extra=` is a field of the line.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


# syslog priorities (sd-daemon(3)): journald reads a "<N>" line prefix as the line's priority.
_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}


class JsonFormatter(logging.Formatter):
    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = self.json_line(record)
        if self.journald:
            return f"<{_PRIORITY.get(record.levelname, 6)}>{text}"
        return text

    def json_line(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def stderr_is_journal(env: dict[str, str] | None = None) -> bool:
    """Whether stderr is the journal: systemd's JOURNAL_STREAM names its device and inode (an
    inherited variable alone is not enough: rxd started from a shell of a service has it too)."""
    device, _, inode = (os.environ if env is None else env).get("JOURNAL_STREAM", "").partition(":")
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{info.st_dev}:{info.st_ino}" == f"{device}:{inode}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(journald=stderr_is_journal()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats what our own request log says, in another format.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
