"""Connection care for long-running worker threads (Django's request cycle does this for views): the
one policy for database errors (which are worth another try, how long to wait between tries) and the
limits every worker connection is held to."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from queueapp import conf, database_urls, store

logger = logging.getLogger(__name__)

# Errors after which a thread's connection may be broken (server restart, network cut). Not every
# DatabaseError: a constraint or data error would fail the same way again, so it is not retried.
CONNECTION_ERRORS = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)
SESSION_ENDED = (psycopg.errors.IdleInTransactionSessionTimeout, psycopg.errors.TransactionTimeout)
"""End the session without being OperationalErrors (InternalErrors, SQLSTATE 25P03 and 25P04): a
worker cut off between two statements of a transaction outlived its idle_in_transaction_session_timeout
(or, PostgreSQL 17, a transaction_timeout a deployment set)."""


def connection_lost(exc: BaseException) -> bool:
    """Whether exc says the connection may be broken: CONNECTION_ERRORS, or the server ended the
    session (SESSION_ENDED; Django raises it as its InternalError, caused by psycopg's)."""
    return isinstance(exc, CONNECTION_ERRORS + SESSION_ENDED) or isinstance(exc.__cause__, SESSION_ENDED)


def reset_connection() -> None:
    """Drop this thread's Django connection so the next query opens a fresh one."""
    try:
        connection.close()
    except CONNECTION_ERRORS:
        logger.debug("closing a broken connection failed", exc_info=True)


def check_connection() -> None:
    """Drop this thread's Django connection if it no longer answers (the server restarted since its
    last use, say), so that the next query opens a fresh one instead of failing on it."""
    if connection.connection is not None and not connection.is_usable():
        reset_connection()


# -- the connection-error policy: which errors are worth another try, and how long to wait --------


class Backoff:
    """Waits between tries at something that needs the database: doubling from FIRST_DELAY up to
    MOST_DELAY, from the start again after a success (reset())."""

    FIRST_DELAY = 0.1
    MOST_DELAY = 2.0

    def __init__(self) -> None:
        self.delay = self.FIRST_DELAY

    def next(self) -> float:
        """The wait before the next try."""
        delay = self.delay
        self.delay = min(delay * 2, self.MOST_DELAY)
        return delay

    def reset(self) -> None:
        self.delay = self.FIRST_DELAY


def unless_unreachable[T](
    call: Callable[[], T],
    event: str,
    *fields: object,
    reset: Callable[[], None] = reset_connection,
    level: int = logging.WARNING,
) -> T | None:
    """call(), or None when the database could not be reached (connection_lost): logged as `event`
    with `error=` appended, and the connection dropped (reset) so that the next call opens a fresh
    one. Any other error propagates: it would fail the same way again."""
    try:
        return call()
    except Exception as exc:
        if not connection_lost(exc):
            raise
        logger.log(level, event + " error=%s", *fields, exc)
        reset()
        return None


def retry_while_unreachable[T](
    call: Callable[[], T], *, until: threading.Event, event: str, fields: tuple[object, ...] = ()
) -> T | None:
    """call(), tried again (Backoff) for as long as the database cannot be reached; None once `until`
    is set (a hard stop: the caller leaves the rest to the reaper). Each failure is a WARNING `event`
    with `error=` and `retry_in=`."""
    backoff = Backoff()
    while True:
        try:
            return call()
        except Exception as exc:
            if not connection_lost(exc):
                raise
            reset_connection()
            if until.is_set():
                logger.error(event + " error=%s: given up, the reaper will clean up", *fields, exc)
                return None
            delay = backoff.next()
            logger.warning(event + " error=%s retry_in=%.1fs", *fields, exc, delay)
            until.wait(delay)


def ensure_usable_connection() -> None:
    """Before a unit of work: replace this thread's connection if an error may have broken it."""
    if connection.connection is not None and connection.errors_occurred:
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            reset_connection()


@dataclass(frozen=True)
class ConnectionLimits:
    """What every connection of a worker process is held to, so that a socket that stops answering
    (packets dropped, nothing closed) becomes an error within about STALE_AFTER instead of a hang.

    TCP keepalives find a dead peer while a connection waits for an answer or idles; tcp_user_timeout
    drops a connection whose sent data goes unacknowledged (libpq parameters: they set the client's
    socket and never reach the server or a pooler); statement and lock timeouts bound what the server
    itself may take, set per transaction (store.StatementLimits) so that they work behind a pooler in
    transaction mode and stay with this worker. The lease (workers.lease) relies on none of them.
    """

    stale_after: float

    def socket_params(self) -> dict[str, int]:
        """libpq parameters for the socket: a silent peer is given up on after about 2/3 STALE_AFTER."""
        return {
            "keepalives": 1,
            "keepalives_idle": max(1, round(self.stale_after / 3)),
            "keepalives_interval": max(1, round(self.stale_after / 9)),
            "keepalives_count": 3,
            "tcp_user_timeout": max(1, round(self.stale_after * 1000)),
        }

    @property
    def statement_timeout_ms(self) -> int:
        return max(1, round(self.stale_after * 1000))

    @property
    def lock_timeout_ms(self) -> int:
        return max(1, self.statement_timeout_ms // 2)

    @functools.cached_property  # one object: its execute wrapper is found again (limit_statements)
    def statements(self) -> store.StatementLimits:
        return store.StatementLimits(self.statement_timeout_ms, self.lock_timeout_ms)

    @functools.cached_property
    def beats(self) -> store.StatementLimits:
        """A heartbeat thread's: a beat gives up within half the lease, so that the next one has the
        other half. lock_timeout alone does not bound it: it holds for each lock wait, and a beat
        queued behind another waiter for its row (the round's waiting mark) waits once for that
        waiter and again for the row's holder, up to the statement timeout, which was the lease.
        Its lock_timeout is shorter than its statement's (a third of the lease), so that a beat
        stuck on one lock still says so: `canceling statement due to lock timeout`."""
        return store.StatementLimits(self.lock_timeout_ms, max(1, self.statement_timeout_ms // 3))

    def install(self) -> None:
        """From now on in this process: every Django connection gets the socket parameters, and
        those of threads other than task threads the statement limits too (limit_statements)."""
        settings_dict = connections.settings[DEFAULT_DB_ALIAS]
        settings_dict["OPTIONS"] = {**settings_dict.get("OPTIONS", {}), **self.socket_params()}
        connection_created.connect(self.limit_statements, weak=False, dispatch_uid="taskqueue-limits")
        reset_connection()  # one opened before now would keep the old parameters

    def limit_statements(self, sender: object, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
        """Sent on every (re)connection of a thread's one connection object. Straight to PostgreSQL,
        the new session gets the limits once; behind a pooler, the connection gets an execute wrapper
        (once) that sets them in each transaction (store.timeouts)."""
        if getattr(_thread, "runs_tasks", False):
            return
        limits = self.beats if getattr(_thread, "beats", False) else self.statements
        if store.behind_pooler(connection.alias):
            if limits.wrap_execute not in connection.execute_wrappers:
                connection.execute_wrappers.append(limits.wrap_execute)
            return
        with connection.wrap_database_errors:
            limits.set_session(connection.connection)


_thread = threading.local()


def runs_tasks() -> None:
    """This thread runs task code: its connection gets no statement limits (its queries are the
    task's business; a task may run a long report), only the socket parameters."""
    _thread.runs_tasks = True


def sends_heartbeats() -> None:
    """This thread sends heartbeats (called as it starts, before its connection opens): its
    connection is held to ConnectionLimits.beats."""
    _thread.beats = True


def listen_conninfo(limits: ConnectionLimits) -> str:
    """Where the listener connects: TASKQUEUE LISTEN_DATABASE_URL (direct, not PgBouncer) or the
    default database, with all its hosts and libpq options (target_session_attrs for failover),
    and the socket limits. No statement limits: LISTEN and the idle check's SELECT 1 wait for no
    lock, and a server that stops answering is the sockets' to find."""
    url = conf.get().listen_database_url
    database = database_urls.parse(url) if url else settings.DATABASES["default"]
    return database_urls.conninfo(database, application_name="taskqueue-listener", **limits.socket_params())
