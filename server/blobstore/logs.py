"""Log set-up shared by the server and the bridge: text or JSON lines, and request ids.

A request id names one call across processes: taken from the caller's `x-request-id`
(gRPC metadata or HTTP header) when it sent one, generated otherwise, returned to the
caller, and sent on by the bridge to the gRPC service, so one id joins the bridge's and
the server's log lines of a call. It lives in a contextvar: set by whoever starts the
call's work (grpc/metrics.py on the server, the bridge's HTTP middleware), read by the
formatter, so every line logged while the call runs carries it without being passed.

Credentials never reach a log: `Redaction`, on the handler `configure` installs,
rewrites `Authorization: ...` values and `Bearer`/`Basic` credentials in every message
and traceback to `[redacted]`. Our own code never logs one; this is for text others
put in records, such as aiohttp's report of a malformed request, which quotes the
offending header line.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import time

import orjson

REQUEST_ID_KEY = "x-request-id"
"""The gRPC metadata key and (case-insensitively) HTTP header carrying the request id."""
MAX_REQUEST_ID = 128
"""Longest caller-given id kept (longer ones are cut): it is logged with every line."""
FORMATS = ("text", "json")

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"
# A header's whole value (to the end of the line or quote: a repr of bytes writes a
# control character as \x01, which must not end the match), then bare credentials: a
# word after Bearer/Basic holding something other than lower-case letters (so that
# prose such as "no bearer tokens" stays, and every generated token, JWT or base64
# user:password, which all hold digits, upper case or punctuation, goes).
_HEADER_VALUE = re.compile(r"(?i)(\bauthorization\b['\"]?\s*[:=,]\s*['\"]?)[^'\"\r\n]+")
_CREDENTIAL = re.compile(
    r"(\b(?i:bearer|basic)\s+)(?!\[redacted\])(?=[^\s'\",]*[^a-z\s'\",])[^\s'\",]+"
)


def redact(text: str) -> str:
    """`text` with credentials replaced by [redacted] (see the module docstring)."""
    text = _HEADER_VALUE.sub(r"\1" + REDACTED, text)
    return _CREDENTIAL.sub(r"\1" + REDACTED, text)


class Redaction(logging.Filter):
    """Redacts credentials in each record's message and traceback before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose args do not fit: the handler reports it
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def new_request_id() -> str:
    """A fresh id: 16 random bytes as hex (unique enough to join logs, cheap to make)."""
    return os.urandom(16).hex()


def accept_request_id(given: str | None) -> str:
    """The caller's id if usable (printable ASCII, cut to MAX_REQUEST_ID), else a new one."""
    if given and given.isascii() and given.isprintable():
        return given[:MAX_REQUEST_ID]
    return new_request_id()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, request_id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _TextFormatter(logging.Formatter):
    """The classic line, with ` [request_id]` added while a call runs."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id.get()
        return line if rid is None else f"{line} [request_id={rid}]"


def configure(level: str, log_format: str = "text") -> None:
    """Sends the process's logs to stderr at `level` in `log_format` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else _TextFormatter(_TEXT_FORMAT))
    handler.addFilter(Redaction())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
