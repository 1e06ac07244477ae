"""Every connection of a worker process is held to ConnectionLimits (workers/db.py): TCP keepalives
and tcp_user_timeout on each socket, so a dead peer is an error and not a hang, and statement and lock
timeouts in each transaction of the queue's own connections (not on task threads', whose queries are
the tasks' own), set LOCAL so that nothing stays on the server session (tests/test_pgbouncer.py shows
why that matters behind a pooler)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection, connections, transaction
from django.db.backends.signals import connection_created

from queueapp import store
from tests.conftest import conninfo, make_worker
from tests.helpers import wait_for
from workers import db
from workers.heartbeat import Heartbeat

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def limits(request: pytest.FixtureRequest) -> Iterator[db.ConnectionLimits]:
    """Installed in this test process as a worker installs them, and taken out again afterwards
    (for STALE_AFTER 3 s unless the test asks otherwise)."""
    limits = db.ConnectionLimits(stale_after=getattr(request, "param", 3.0))
    settings_dict = connections.settings["default"]
    options = settings_dict.get("OPTIONS", {})
    limits.install()
    try:
        yield limits
    finally:
        connection_created.disconnect(dispatch_uid="taskqueue-limits")
        if limits.statements.wrap_execute in connection.execute_wrappers:
            connection.execute_wrappers.remove(limits.statements.wrap_execute)
        settings_dict["OPTIONS"] = options
        connection.close()


def socket_of(fileno: int) -> dict[str, int]:
    sock = socket.socket(fileno=os.dup(fileno))
    try:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()


HELD = {"keepalive": 1, "idle": 1, "interval": 1, "count": 3, "user_timeout_ms": 3000}


def timeouts(conn: psycopg.Connection) -> tuple[str, str]:
    (statement,) = conn.execute("SHOW statement_timeout").fetchall()
    (lock,) = conn.execute("SHOW lock_timeout").fetchall()
    return statement[0], lock[0]


def test_every_worker_connection_has_keepalives_and_a_user_timeout(limits: db.ConnectionLimits) -> None:
    if not connection.settings_dict["HOST"]:
        pytest.skip("the test database is reached over a Unix socket: no TCP options to see")
    connection.ensure_connection()
    session = store.WorkerSession(worker_id=make_worker().id, queues=["default"], limits=limits.statements)
    for conn in (connection.connection, session.connect(), psycopg.connect(db.listen_conninfo(limits))):
        assert socket_of(conn.fileno()) == HELD
        conn.close()


def test_a_direct_connection_has_the_limits_for_its_session_and_the_rounds_session_per_transaction(
    limits: db.ConnectionLimits,
) -> None:
    """Straight to PostgreSQL (no pooler), a Django connection of the queue's gets the limits once, for
    its session, as it opens: its statements need no transaction of their own (one round trip, not
    four). Behind a pooler they are set per transaction and nothing stays on the server session
    (tests/test_pgbouncer.py). The rounds' own session sets them LOCAL in each round."""
    assert not store.behind_pooler()
    connection.ensure_connection()
    assert timeouts(connection.connection) == ("3s", "1500ms")  # psycopg's own: the session's
    assert limits.statements.wrap_execute not in connection.execute_wrappers
    with transaction.atomic(), connection.cursor() as cursor:  # the caller's transaction
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone() == ("1500ms",)

    session = store.WorkerSession(worker_id=make_worker().id, queues=["default"], limits=limits.statements)
    session.round([], limit=1)
    assert session.conn is not None
    assert timeouts(session.conn) == ("0", "0")
    session.close()


def test_a_task_threads_connection_keeps_the_socket_limits_and_no_statement_limits(
    limits: db.ConnectionLimits,
) -> None:
    if not connection.settings_dict["HOST"]:
        pytest.skip("the test database is reached over a Unix socket: no TCP options to see")
    seen: list[object] = []

    def task_thread() -> None:
        db.runs_tasks()
        try:
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute("SHOW statement_timeout")
                seen.extend([socket_of(connection.connection.fileno()), cursor.fetchone()])
        finally:
            connection.close()

    thread = threading.Thread(target=task_thread)
    thread.start()
    thread.join(10)
    assert seen == [HELD, ("0",)]


def beating(worker_id: uuid.UUID, results: list[bool]) -> threading.Thread:
    """A started thread that beats once for the worker, as its heartbeat thread would, into results."""

    def beat() -> None:
        db.sends_heartbeats()  # as the worker's heartbeat thread starts
        try:
            results.append(Heartbeat(worker_id, on_lost=lambda: None).run_once())
        finally:
            connection.close()

    thread = threading.Thread(target=beat)
    thread.start()
    return thread


def test_a_heartbeat_stuck_behind_a_lock_fails_within_the_lock_timeout(
    limits: db.ConnectionLimits, raw_conn: psycopg.Connection
) -> None:
    """Before the limits, a beat waited behind any lock on its row for as long as it was held."""
    worker = make_worker()
    results: list[bool] = []

    with raw_conn.transaction():
        raw_conn.execute("SELECT 1 FROM queueapp_worker WHERE id = %s FOR UPDATE", [worker.id])
        thread = beating(worker.id, results)
        thread.join(limits.lock_timeout_ms / 1000 + 3)
        stuck = thread.is_alive()
    thread.join(10)
    assert not stuck, "the heartbeat waited on the lock past lock_timeout"
    assert results == [False]  # failed, as on a connection error: the next beat tries again


def waiting_for_a_lock(conn: psycopg.Connection, query: str) -> list[tuple[int, str]]:
    """(pid, wait_event) of the server sessions running query (a LIKE pattern) that wait for a lock."""
    return conn.execute(
        "SELECT pid, wait_event FROM pg_stat_activity WHERE query LIKE %s AND wait_event_type = 'Lock'",
        [query],
    ).fetchall()


@pytest.mark.parametrize("limits", [9.0], indirect=True)  # a beat: lock_timeout 3 s, statement 4.5 s
def test_a_heartbeat_queued_behind_another_waiter_for_its_row_gives_up_within_half_the_lease(
    limits: db.ConnectionLimits, raw_conn: psycopg.Connection
) -> None:
    """lock_timeout holds for each lock wait: a beat queued behind another waiter (the round's waiting
    mark, in a CI run behind PgBouncer) waited for that waiter, and once it was let through, for the
    row's holder all over again; it gave up only at the statement timeout, as the lease ran out."""
    worker = make_worker()
    half_the_lease = limits.beats.statement_timeout_ms / 1000
    lock_timeout = limits.beats.lock_timeout_ms / 1000  # a third of the lease
    results: list[bool] = []

    # A third session watches: one in a transaction sees pg_stat_activity as it was at its first look.
    watcher = psycopg.connect(conninfo(), autocommit=True)
    with watcher, psycopg.connect(conninfo(), autocommit=True) as other, raw_conn.transaction():
        raw_conn.execute("SELECT 1 FROM queueapp_worker WHERE id = %s FOR UPDATE", [worker.id])

        def first_waiter() -> None:
            with contextlib.suppress(psycopg.errors.QueryCanceled):  # let go of the row's place below
                other.execute("UPDATE queueapp_worker SET waiting = true WHERE id = %s", [worker.id])

        waiter = threading.Thread(target=first_waiter, daemon=True)
        waiter.start()
        ((first, _),) = wait_for(
            lambda: waiting_for_a_lock(watcher, "UPDATE queueapp_worker SET waiting%"),
            timeout=10,
            message="the first waiter to wait for the row's holder",
        )
        sent_at = time.monotonic()
        thread = beating(worker.id, results)
        queued = wait_for(
            lambda: waiting_for_a_lock(watcher, "%last_heartbeat_at%"),
            timeout=10,
            message="the beat to queue behind the first waiter",
        )
        assert [event for _, event in queued] == ["tuple"]  # the first waiter holds the row's place
        # Three quarters into the beat's lock_timeout the first waiter gives up, and the beat is let
        # through to wait for the row's holder, which keeps its lock until the beat is back.
        time.sleep(max(0.0, sent_at + lock_timeout * 3 / 4 - time.monotonic()))
        raw_conn.execute("SELECT pg_cancel_backend(%s)", [first])
        wait_for(
            lambda: (
                [event for _, event in waiting_for_a_lock(watcher, "%last_heartbeat_at%")]
                == ["transactionid"]
            ),
            timeout=lock_timeout / 4,
            message="the beat, let through, to wait for the row's holder",
        )
        thread.join(sent_at + half_the_lease + 1 - time.monotonic())  # before: back 2.25 s after that
        stuck = thread.is_alive()
    thread.join(10)
    waiter.join(10)
    assert not stuck, "the beat waited on past half the lease"
    assert results == [False]  # failed, as on a connection error: the next beat tries again


@pytest.mark.parametrize(
    ("call", "lock"),
    [
        # The claim skips locked rows, but not a locked table (a long ALTER, a careless LOCK TABLE).
        (lambda session: session.round([], limit=1), "LOCK TABLE queueapp_task_live IN EXCLUSIVE MODE"),
        (lambda session: session.set_waiting(True), "SELECT 1 FROM queueapp_worker WHERE id = %s FOR UPDATE"),
        (
            lambda session: session.set_waiting(False),
            "SELECT 1 FROM queueapp_worker WHERE id = %s FOR UPDATE",
        ),
        (lambda session: session.flow_view(), "LOCK TABLE queueapp_queuecontrol IN ACCESS EXCLUSIVE MODE"),
    ],
    ids=["round", "mark-waiting", "clear-waiting", "flow-view"],
)
def test_a_workers_session_stuck_behind_a_lock_fails_within_the_lock_timeout(
    limits: db.ConnectionLimits, raw_conn: psycopg.Connection, call: Any, lock: str
) -> None:
    """Every statement of its session: the waiting mark once waited on a locked worker row (an
    operator's UPDATE, a migration) for as long as the lock was held, and the worker's loop with it."""
    worker = make_worker()
    raw_conn.execute("UPDATE queueapp_worker SET waiting = true WHERE id = %s", [worker.id])  # to clear
    session = store.WorkerSession(worker_id=worker.id, queues=["default"], limits=limits.statements)
    errors: list[Exception] = []

    def run() -> None:
        try:
            call(session)
        except psycopg.OperationalError as exc:
            errors.append(exc)

    with raw_conn.transaction():
        raw_conn.execute(lock, [worker.id] if "%s" in lock else None)
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(limits.lock_timeout_ms / 1000 + 3)
        stuck = thread.is_alive()
    thread.join(10)
    session.close()
    assert not stuck, "the session waited on the lock past lock_timeout"
    assert [type(exc) for exc in errors] == [psycopg.errors.LockNotAvailable]


@pytest.mark.parametrize("limits", [30.0], indirect=True)  # the default STALE_AFTER: lock_timeout 15 s
def test_partition_ddl_keeps_its_own_two_second_lock_timeout_under_a_workers_limits(
    limits: db.ConnectionLimits, raw_conn: psycopg.Connection
) -> None:
    """ATTACH waits for the default partition's lock, and every read of history queues behind it:
    the worker's 15 s lock_timeout, re-set before each statement, once replaced the DDL's 2 s."""
    today = store.database_now().astimezone(dt.UTC).date()
    name = store.history.partition_name(today + dt.timedelta(days=7))
    raw_conn.execute(f"DROP TABLE {name}")
    with raw_conn.transaction():
        raw_conn.execute("LOCK TABLE queueapp_task_history_default IN ACCESS SHARE MODE")  # a long read
        started = time.monotonic()
        assert store.ensure_history_partitions() == []
        waited = time.monotonic() - started
    assert waited < 2 + 3, f"the DDL waited {waited:.1f} s for its lock"
    assert store.ensure_history_partitions() == [name]  # the next run makes it


def test_a_worker_transaction_left_idle_by_a_cut_off_worker_ends_within_the_lock_timeout(
    limits: db.ConnectionLimits, raw_conn: psycopg.Connection
) -> None:
    """Cut off between two statements of a transaction (a heartbeat's Django atomic block is a round
    trip each), a worker leaves its server session idle in it, holding its worker row: every reaper
    of the fleet waited on that lock until the server heard of the dead peer (CI saw one wait 300 s)."""
    worker = make_worker()
    cut_off = psycopg.connect(conninfo())
    try:
        cut_off.execute(limits.statements.limit_transaction)  # opens the transaction, as a worker's does
        cut_off.execute("UPDATE queueapp_worker SET last_heartbeat_at = now() WHERE id = %s", [worker.id])
        # ...and nothing more comes from it. A reaper waits for the row: the session must be ended
        # well within the reaper's patience (here its lock timeout and then some), not never.
        patience_ms = limits.lock_timeout_ms + 10_000
        with raw_conn.transaction():
            raw_conn.execute(f"SET LOCAL lock_timeout = {patience_ms}")
            raw_conn.execute("UPDATE queueapp_worker SET state = 'LOST' WHERE id = %s", [worker.id])
    finally:
        cut_off.close()


def test_a_session_the_server_ended_for_idling_in_a_transaction_counts_as_unreachable(
    raw_conn: psycopg.Connection,
) -> None:
    """A worker cut off between two statements of a transaction is ended by the server's
    idle_in_transaction_session_timeout (which the worker's transactions set): the error is an
    InternalError, not an OperationalError, yet the connection is gone. It is handled as a lost
    connection (logged, the connection dropped, None), not raised: raised, it ended the supervisor."""

    def ended_mid_transaction() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL idle_in_transaction_session_timeout = '100ms'")
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
            wait_for(
                lambda: (
                    raw_conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]
                    ).fetchone()[0]
                    == 0
                ),
                timeout=10,
                message="the server to end the idle session",
            )
            cursor.execute("SELECT 1")

    assert db.unless_unreachable(ended_mid_transaction, "test_failed") is None
    assert connection.connection is None  # dropped: the next query opens a fresh one
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
