"""Application logs on standard error: text lines as ever, or one JSON object a line naming the request served.

Every logger of the gateway logs through the root handler that :func:`configure_logging` installs. In the
``json`` format a line is ``{"time", "level", "logger", "message"}``, with ``exception`` (the traceback) when
one was logged, ``request_id`` and ``tenant`` when the line was logged while a request was served, and
``worker`` and ``pid`` in a worker of ``serve --workers N``, and ``trace_id`` and ``span_id`` of the span
current when tracing is on (the request's, or its upstream attempt's), so that a line leads to its trace.

The request comes from the context variable :data:`SERVING`, which the pipeline's handler sets when a request
arrives (tollgate/pipeline/handler.py). A connection's requests run one after the other in its task, so the
variable names the request in that task alone, and in the short tasks it starts, until the next request of the
connection replaces it (once its handler is done, only the request's id and principal are kept); the gateway's
background tasks start with a context of their own (tollgate/background.py) and log without a request. The
tenant is read when a line is written: a line logged before the caller was identified has none.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from contextvars import ContextVar
from typing import Protocol

import orjson

__all__ = ["LOG_FORMATS", "SERVING", "TEXT_FORMAT", "JsonFormatter", "Served", "configure_logging", "remove_logging"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Principal(Protocol):
    @property
    def tenant(self) -> str: ...


class Served(Protocol):
    """What a log line reads of the request being served (the pipeline's ``RequestContext`` is one)."""

    @property
    def request_id(self) -> str: ...

    @property
    def principal(self) -> _Principal | None: ...


SERVING: ContextVar[Served | None] = ContextVar("tollgate_serving", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is a string field, its newlines escaped)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        served = SERVING.get()
        if served is not None:
            entry["request_id"] = served.request_id
            principal = served.principal
            if principal is not None:
                entry["tenant"] = principal.tenant
        ids = _current_span_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if self.worker is not None:
            entry["worker"] = self.worker
            entry["pid"] = record.process
        return orjson.dumps(entry, default=str).decode()


def _current_span_ids() -> tuple[str, str] | None:
    """The current span's trace and span id in hex, when tracing is on; None otherwise.

    The OpenTelemetry API is an optional extra, loaded only when tracing is enabled: without it loaded there is
    no span to name, and this costs one dictionary look-up.
    """
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None
    span_context = api.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


class _StandardError(logging.StreamHandler):  # type: ignore[type-arg]
    """The gateway's handler on the root logger (one at a time: configuring again replaces it)."""


def configure_logging(
    level: str, log_format: str, *, text_format: str = TEXT_FORMAT, worker: int | None = None
) -> None:
    """Every logger to standard error at ``level``, in ``log_format`` ("text" with ``text_format``, or "json").

    Called again (``serve`` once it read the config's ``logging:``, a worker with its index), it replaces the
    handler it installed before; handlers installed by others stay.
    """
    remove_logging()
    handler = _StandardError(sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if log_format == "json" else logging.Formatter(text_format))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


def remove_logging() -> None:
    """Take the handler of :func:`configure_logging` off the root logger (tests that configured it)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StandardError)]:
        root.removeHandler(old)
        old.close()
