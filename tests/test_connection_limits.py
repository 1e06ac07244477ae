"""Every connection of a worker process is held to ConnectionLimits (workers/db.py): TCP keepalives
and tcp_user_timeout on each socket, so a dead peer is an error and not a hang, and statement and lock
timeouts on the queue's own connections (not on task threads', whose queries are the tasks' own)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection, connections
from django.db.backends.signals import connection_created

from queueapp import store
from tests.conftest import make_worker
from workers import db
from workers.heartbeat import Heartbeat

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def limits() -> Iterator[db.ConnectionLimits]:
    """Installed in this test process as a worker installs them, and taken out again afterwards."""
    limits = db.ConnectionLimits(stale_after=3.0)
    settings_dict = connections.settings["default"]
    options = settings_dict.get("OPTIONS", {})
    limits.install()
    try:
        yield limits
    finally:
        connection_created.disconnect(dispatch_uid="taskqueue-limits")
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


def test_every_worker_connection_has_keepalives_a_user_timeout_and_statement_limits(
    limits: db.ConnectionLimits,
) -> None:
    if not connection.settings_dict["HOST"]:
        pytest.skip("the test database is reached over a Unix socket: no TCP options to see")
    connection.ensure_connection()
    assert socket_of(connection.connection.fileno()) == HELD
    assert timeouts(connection.connection) == ("3s", "1500ms")

    session = store.WorkerSession(
        worker_id=make_worker().id, queues=["default"], options=limits.libpq_options()
    )
    listener = psycopg.connect(db.listen_conninfo(limits), autocommit=True)
    try:
        for conn in (session.connect(), listener):
            assert socket_of(conn.fileno()) == HELD
            assert timeouts(conn) == ("3s", "1500ms")
            conn.close()
    finally:
        listener.close()


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
            seen.extend([socket_of(connection.connection.fileno()), timeouts(connection.connection)])
        finally:
            connection.close()

    thread = threading.Thread(target=task_thread)
    thread.start()
    thread.join(10)
    assert seen == [HELD, ("0", "0")]


def test_a_heartbeat_stuck_behind_a_lock_fails_within_the_lock_timeout(
    limits: db.ConnectionLimits, raw_conn: psycopg.Connection
) -> None:
    """Before the limits, a beat waited behind any lock on its row for as long as it was held."""
    worker = make_worker()
    results: list[bool] = []

    def beat() -> None:
        try:
            results.append(Heartbeat(worker.id, on_lost=lambda: None).run_once())
        finally:
            connection.close()

    with raw_conn.transaction():
        raw_conn.execute("SELECT 1 FROM queueapp_worker WHERE id = %s FOR UPDATE", [worker.id])
        thread = threading.Thread(target=beat)
        thread.start()
        thread.join(limits.lock_timeout_ms / 1000 + 3)
        stuck = thread.is_alive()
    thread.join(10)
    assert not stuck, "the heartbeat waited on the lock past lock_timeout"
    assert results == [False]  # failed, as on a connection error: the next beat tries again
