"""The daemon's log lines: JSON lines on stderr by default (systemd's journal keeps them), or text.

Callers pass facts as ``extra={"fields": {...}}``; they are merged into the JSON object
(and appended as ``key=value`` in text). No secret ever reaches a log call: the fleet's
secrets are :class:`wakegrid.secret.Secret` objects whose ``str`` is masked.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

LOGGER = "wakegrid"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields = getattr(record, "fields", None) or {}
        tail = "".join(f" {key}={value}" for key, value in fields.items())
        line = f"{stamp} {record.levelname.lower():7} {record.getMessage()}{tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(fmt: str = "json", level: int = logging.INFO) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # Our lines and the libraries' (a job's traceback from APScheduler, uvicorn's errors) alike.
    # A round that outlasts its interval makes APScheduler skip the next start with a warning: that
    # skip is the design (never two rounds at once), so its scheduler speaks only of errors.
    levels = ((LOGGER, level), ("apscheduler", logging.WARNING), ("apscheduler.scheduler", logging.ERROR))
    for name, minimum in (*levels, ("uvicorn", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(minimum)  # APScheduler says "Running job …" every round: its warnings only
        logger.propagate = False
    return logging.getLogger(LOGGER)


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)
