"""Whether the queue's statements may be prepared on the server, whatever stands in front of it.

A prepared statement lives in one server session. A pooler in transaction mode (PgBouncer before
1.21, or without max_prepared_statements) hands each transaction whichever server session is free:
a statement one client prepared is missing when it runs it again, or already exists when the next
client prepares its own under the same name (`prepared statement "_pg3_0" already exists`), and
enqueues and workers fail. TASKQUEUE["PREPARED_STATEMENTS"] says what to do: "on", "off", or
"auto" (the default), which prepares unless the connection turns out to go through a pooler.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from queueapp import conf
from queueapp.sql import QUERIES

logger = logging.getLogger(__name__)

MODES: dict[str, bool | None] = {"auto": None, "on": True, "off": False, "true": True, "false": False}
"""TASKQUEUE["PREPARED_STATEMENTS"] -> prepare always, never, or unless behind a pooler (None); true
and false are what the setting took before auto."""

_seen: dict[str, tuple[int, int]] = {}
"""Per database alias, for this process: (the backend pid its connection announced, the one that
answered); they differ behind a pooler."""
_warned: set[str] = set()
_looking = threading.Lock()
"""One thread looks (web processes enqueue from many), so the WARNING comes once."""

_LOST = (psycopg.errors.DuplicatePreparedStatement, psycopg.errors.InvalidSqlStatementName)
"""What a prepared statement meets behind a pooler that does not keep them."""


def prepared_mode() -> bool | None:
    """TASKQUEUE["PREPARED_STATEMENTS"] as True (on), False (off) or None (auto)."""
    value = conf.get().prepared_statements
    if isinstance(value, bool):
        return value
    if str(value).lower() not in MODES:
        raise ImproperlyConfigured(f"TASKQUEUE_PREPARED_STATEMENTS is {value!r}; it must be auto, on or off")
    return MODES[str(value).lower()]


def prepared_statements(using: str = "default") -> bool:
    """May the queue's statements be prepared on this database's connections? In auto mode the
    first call in a process looks for a pooler, and finding one logs a WARNING once."""
    mode = prepared_mode()
    if mode is not None:
        return mode
    pooled = behind_pooler(using)
    if pooled and using not in _warned:
        with _looking:
            if using not in _warned:
                _warned.add(using)
                announced, serving = _seen[using]
                logger.warning(
                    "prepared_statements_off database=%s announced_pid=%s serving_pid=%s: a connection "
                    "pooler stands between this process and PostgreSQL (the server session that answers "
                    "is not the one the connection announced); in transaction mode it would mix prepared "
                    "statements up between clients, so the queue's statements run unprepared. Set "
                    "TASKQUEUE_PREPARED_STATEMENTS=on if the pooler keeps prepared statements (PgBouncer "
                    "1.21+ with max_prepared_statements, or session mode), or off to skip this check",
                    using,
                    announced,
                    serving,
                )
    return not pooled


def behind_pooler(using: str = "default") -> bool:
    """Do this process's connections to the database go through a pooler? The server session that
    answers is not the one the connection announced. Looked at once per process, on this thread's
    connection (opened if need be)."""
    if using not in _seen:
        with _looking:
            if using not in _seen:
                _seen[using] = _pids(using)
    announced, serving = _seen[using]
    return announced != serving


def _pids(using: str) -> tuple[int, int]:
    db = connections[using]
    db.ensure_connection()
    announced = db.connection.info.backend_pid
    # On psycopg's connection itself: once per process, and none of the caller's business (Django's
    # execute wrappers and query log do not see it).
    with db.wrap_database_errors:
        (serving,) = db.connection.execute(QUERIES["serving_backend"], prepare=False).fetchone()
    return announced, int(serving)


@contextlib.contextmanager
def explain_lost_statements() -> Iterator[None]:
    """Let an error about a prepared statement through, logged with what it means and what to do."""
    try:
        yield
    except _LOST as exc:
        logger.error(
            "prepared_statement_lost error=%s: the server session holds another client's prepared "
            "statements, not this connection's, as behind a connection pooler in transaction mode; set "
            "TASKQUEUE_PREPARED_STATEMENTS=auto (or off) unless the pooler keeps them",
            exc,
        )
        raise
