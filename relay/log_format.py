"""How log lines look: ``LOG_FORMAT=text`` (the default) or ``json``, for every logger.

``configure`` puts one handler on the root logger, so the relay's loggers, uvicorn's (served
with ``log_config=None``, they propagate to the root) and any library's print the same way.
With ``json`` each line is one object::

    {"time": "2026-12-01T20:31:02.118Z", "level": "INFO", "logger": "relay.call",
     "message": "call started: inbound from +1555***1111 to +1555***2222",
     "call_sid": "CA…"}

``call_sid`` is its own field when the line is about a call (the relay writes those lines as
``[CallSid] …``; the prefix moves into the field). Fields passed with ``extra=`` become fields
of the object, a traceback becomes ``exc_info``. What goes into a line is the caller's
business: the relay logs event types, masked numbers and redacted transcripts, never payloads
or secrets.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_CALL_PREFIX = re.compile(r"\[((?:CA|MZ)[A-Za-z0-9]{1,64})\] ")
# Attributes every LogRecord has: anything else was passed with ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName", "color_message"}  # uvicorn's coloured copy of the text


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for its fields)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
        found = _CALL_PREFIX.match(message)
        if found:
            out["call_sid"] = found.group(1)
            message = message[found.end():]
        out["message"] = message
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


def configure(log_format: str, level: str) -> None:
    """Send every logger's records to stderr in ``log_format`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's loggers keep no handlers of their own, so their lines come here too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.captureWarnings(True)
