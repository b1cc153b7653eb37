"""The gateway's log: Python's `logging`, a logger per module under `lf.gateway`, one line per event on stderr.
`--log-format text` (the default) reads like the rest of lf (`lf-serve: started smol in 1.2s`); `json` gives one
object per line with the event's fields, for journald, containers and log shippers. Never a message's content,
never a key."""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
_FIELDS = ("event", "model", "status", "seconds")  # what events add to a record (lf.gateway.events.log_event)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        return f"lf-serve: {level}{record.getMessage()}" + (
            f"\n{self.formatException(record.exc_info)}" if record.exc_info else ""
        )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _FIELDS:
            if hasattr(record, name):
                data[name] = getattr(record, name)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text") -> None:
    """Route lf.gateway's loggers (and uvicorn's errors) to stderr, at `level`, in `fmt`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for name, at in (("lf", level), ("uvicorn.error", "debug" if level == "debug" else "warning")):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(at.upper())
        logger.propagate = False
