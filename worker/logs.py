"""AGENTSTORE_LOG_FORMAT=json: the worker's log as one JSON object per line.

Each line has the time, level, logger and message, and what the record carries of op ids,
message ids, batch size, duration and trace id. Log calls never pass payloads or secrets,
and an exception is written as its type, the first line of its message and its frames: a
driver's message can go on to quote a row (PostgreSQL's DETAIL line).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from typing import Any

# Attributes a record may carry (`extra=` of the log call, or Celery's task logger).
_FIELDS = ("op_id", "op_ids", "message_id", "batch_ops", "duration_ms", "trace_id", "task_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "???":  # Celery's placeholder outside tasks
                entry[name] = value
        if "trace_id" not in entry and (trace_id := _current_trace_id()) is not None:
            entry["trace_id"] = trace_id
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            lines = str(exc).strip().splitlines()
            entry["error"] = f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
            entry["stack"] = "".join(traceback.format_tb(exc.__traceback__))
        return json.dumps(entry, default=str)


def _current_trace_id() -> str | None:
    """The active OpenTelemetry span's trace id, if OpenTelemetry is in use in this process."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def use_json(logger: logging.Logger) -> None:
    """Make every handler of `logger` write JSON lines."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
