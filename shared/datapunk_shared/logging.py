"""Structured JSON logs, one object per line, each carrying the request id of the
call it was written in (set by the server interceptor through a context variable)."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import structlog

from datapunk_shared.auth.identity import identity_var

__all__ = ["configure_logging", "get_logger", "request_id_var"]

request_id_var: ContextVar[str | None] = ContextVar("datapunk_request_id", default=None)


def _add_request_id(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    request_id = request_id_var.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    identity = identity_var.get()
    if identity is not None:
        # The caller whose permissions apply (for a forwarded call, the one Nexus acts
        # for), so every log line of a call says who and which tenant.
        effective = identity.effective
        event.setdefault("principal", effective.subject)
        event.setdefault("tenant", effective.tenant)
        if effective is not identity:
            event.setdefault("via", identity.subject)
    return event


def configure_logging(service: str, *, level: str = "INFO", json_format: bool = True) -> None:
    """Route structlog and stdlib logging to stderr as JSON (or readable text)."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_format else structlog.dev.ConsoleRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_request_id,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("msg"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries log through stdlib logging; render their records the same way.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.EventRenamer("msg"),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if level == "DEBUG" else level)
    logging.getLogger("datapunk").setLevel(level)


def get_logger(name: str) -> Any:
    """A structlog logger; ``log.info("event", key=value)``."""
    return structlog.get_logger(name)
