"""Structured logs: which job a log line is about, as fields, and JSON lines for shippers.

While a thread works on one job (a runner carrying it, an executor launching it), the job is
its *log context*: ``job_id``, ``execution_id``, ``host`` and ``attempt``. Every line logged
through ``get_logger`` in that thread carries them as attributes of the record (``extra``),
so a formatter can print them and a log shipper index them; ``JSONFormatter`` writes each
record as one JSON object with these four fields always present (null when the line is
about no job). Executors know no models: they only log, and the context set by the runner
that called them names the job.

While a job's context knows its secret values (``bind(secrets=...)``, from the launch
description), a message quoting one is logged with it masked.

Standard library only: this module sits at the bottom of the layers (see .importlinter).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

# The fields every job line carries, in the order JSONFormatter writes them.
JOB_FIELDS = ("job_id", "execution_id", "host", "attempt")
MASK = "••••••"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "container_manager_job", default=None
)


@contextlib.contextmanager
def job_context(
    job_id: object, *, execution_id: str = "", host: str = "", attempt: int | None = None
) -> Iterator[dict[str, Any]]:
    """The lines logged in this block are about job ``job_id`` (``bind`` adds what becomes
    known later, such as the execution id once it is launched)."""
    fields: dict[str, Any] = {
        "job_id": str(job_id),
        "execution_id": execution_id or None,
        "host": host or None,
        "attempt": attempt,
        "secrets": (),
    }
    token = _context.set(fields)
    try:
        yield fields
    finally:
        _context.reset(token)


def about(job: Any) -> contextlib.AbstractContextManager[dict[str, Any]]:
    """``job_context`` for a job (any object with a job's fields: no model is imported)."""
    host = job.host if getattr(job, "host_id", None) is not None else None
    return job_context(
        job.pk,
        execution_id=job.execution_id,
        host=getattr(host, "name", ""),
        attempt=job.attempts or None,
    )


def bind(**fields: Any) -> None:
    """Add to (or change in) the current job context; nothing outside one."""
    current = _context.get()
    if current is not None:
        current.update({name: value for name, value in fields.items() if value not in ("", None)})


def current_fields() -> dict[str, Any]:
    """The job fields of the current context ({} outside one)."""
    current = _context.get()
    return {} if current is None else {name: current[name] for name in JOB_FIELDS}


def mask(text: str) -> str:
    """``text`` with the current job's secret values masked."""
    current = _context.get()
    for value in current["secrets"] if current else ():
        text = text.replace(value, MASK)
    return text


class JobLogger(logging.LoggerAdapter):
    """A logger whose lines carry the current job's fields (see the module's docstring)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        fields = current_fields()
        if fields:
            kwargs["extra"] = {**fields, **(kwargs.get("extra") or {})}
        return msg, kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        current = _context.get()
        if current and current["secrets"]:
            # Formatted here, where the job's secrets are known, rather than in a handler.
            msg, args = mask(str(msg) % args if args else str(msg)), ()
        msg, processed = self.process(msg, kwargs)
        processed.setdefault("stacklevel", 2)
        self.logger.log(level, msg, *args, **processed)


def get_logger(name: str) -> JobLogger:
    """The logger of module ``name``, its lines carrying the job they are about."""
    return JobLogger(logging.getLogger(name), {})


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the job fields
    (null when the line is about no job), thread, and the traceback of an exception.

    For log shippers; see the README, Operations, for a LOGGING setting that uses it."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({name: getattr(record, name, None) for name in JOB_FIELDS})
        line["thread"] = record.threadName
        if record.exc_info:
            line["exception"] = mask(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)
