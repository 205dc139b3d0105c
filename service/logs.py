"""Sibyl's log lines: the request each was written for, as text or as JSON lines.

`REQUEST_ID` holds the id of the request this thread is serving (set by
service/api/request_ids.py, None outside a request), so that code without Flask (the
job service, the store) can read it too. `RequestIdFilter` puts it on every record a
handler writes ("-" outside a request); `configure` sends the logs to stderr as text
or, with SIBYL_LOG_FORMAT=json, as one JSON object a line for log shippers.
"""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

REQUEST_ID: ContextVar[str | None] = ContextVar("sibyl_request_id", default=None)
# What a record says when it was written outside a request.
NO_REQUEST = "-"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
LOG_FORMATS = ("text", "json")


def current_request_id() -> str | None:
    """The id of the request this thread is serving, or None."""
    return REQUEST_ID.get()


@contextmanager
def request_scope(request_id: str) -> Iterator[None]:
    """Serve a request under this id: every record written meanwhile carries it."""
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (one given with `extra=` is kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or NO_REQUEST
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, request_id,
    and the exception's traceback when there is one. A message's own line breaks are
    escaped, so one record is always one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or NO_REQUEST,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(log_format: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Log INFO and above to stderr (or stream) in the format, each record with its
    request's id: one handler on the root logger, which Sibyl's loggers (`sibyl`,
    `service.*`, `hooks.*`) and the libraries' reach. Gunicorn's and uvicorn's
    (`gunicorn.error`, `uvicorn.error`) have their own handlers: `gunicorn_logging`."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def gunicorn_logging(log_format: str) -> dict | None:
    """Gunicorn's `logconfig_dict` for the format: as JSON, its lines (and uvicorn's,
    which share its handlers) are JSON lines too, so a log shipper reads every line the
    server writes; as text, None keeps gunicorn's own format."""
    if log_format != "json":
        return None
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "json",
        "filters": ["request_id"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"request_id": {"()": RequestIdFilter}},
        "handlers": {"json": handler},
        "root": {"level": "INFO", "handlers": ["json"]},
        "loggers": {
            name: {"level": "INFO", "handlers": ["json"], "propagate": False}
            for name in ("gunicorn.error", "gunicorn.access")
        },
    }
