"""Listener: one dedicated autocommit connection LISTENing for enqueues; a hint, never the only path.

It reconnects and re-LISTENs after any connection loss (and says so: notifications sent meanwhile are
gone), and checks its idle connection now and then. What a notification means is the hearer's: a lone
worker's (WorkerHearer, below) wakes its own rounds; a supervisor's (workers.wakeups.Dispatcher) hands
each wake-up to one idle child, so a host has one LISTEN connection however many children it runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import socket
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol
from uuid import UUID

import psycopg
from django.db import connection

from queueapp import store
from workers import db

logger = logging.getLogger(__name__)


IDLE_CHECK = 5.0
"""Seconds without a word from the server after which a listener checks its connection."""


class Hearer(Protocol):
    def settings_changed(self, conn: psycopg.Connection[Any]) -> None:
        """Flow-control settings of our queues changed (or may have: on connecting)."""

    def enqueued(self, wake: store.Wake) -> None:
        """Tasks were enqueued on one of our queues."""

    def missed(self) -> None:
        """Notifications may have been missed (connecting, connection lost): everyone should look."""

    def idle(self, conn: psycopg.Connection[Any]) -> None:
        """Nothing heard for a while: a round trip, so that a dead connection errors."""


class Listener:
    name = "listener"

    def __init__(
        self,
        conninfo: str | None,
        *,
        queues: Collection[str],
        hearer: Hearer,
        stop: threading.Event,
        channel: str | None = None,
        interrupt: socket.socket | None = None,
        idle_check: float = IDLE_CHECK,
    ) -> None:
        self.conninfo = conninfo
        """Where its own connection goes; None: it LISTENs on this thread's Django connection (a
        supervisor's, whose housekeeping runs on it between waits: one connection for the host)."""
        self.queues = frozenset(queues)
        self.channel = channel
        """Its own channel (store.wake_channel), where wake-ups naming its workers come; the shared
        one brings the rest (a resumed queue, and workers of a version before migration 0015)."""
        self.hearer = hearer
        self.interrupt = interrupt
        """Readable when its owner has something to do at once (a supervisor's signals: a child
        exited, stop): run_once returns then, instead of at its timeout."""
        self.stop = stop
        self.idle_check = idle_check
        self.conn: psycopg.Connection[Any] | None = None
        self.last_checked = time.monotonic()
        self.backoff = db.Backoff()

    def connect(self) -> None:
        conn = self.django_connection() if self.conninfo is None else self.own_connection(self.conninfo)
        conn.execute(f"LISTEN {store.SETTINGS_CHANNEL}")
        self.conn = conn
        # Said before the hearer acts on it (a supervisor's children look and claim): what they do
        # because the listener connected comes after this line in a shared log.
        logger.info("listening channel=%s", store.NOTIFY_CHANNEL)
        self.hearer.settings_changed(conn)  # changes from here on are notified
        if self.channel is not None:
            conn.execute(f"LISTEN {self.channel}")
        conn.execute(f"LISTEN {store.NOTIFY_CHANNEL}")  # last: pg_stat_activity shows it while idle
        self.backoff.reset()
        self.last_checked = time.monotonic()
        self.hearer.missed()  # anything enqueued while we were away was not announced to us

    def hear(self, conn: psycopg.Connection[Any]) -> bool:
        """Hand on what has come, without waiting: psycopg's backlog (what was notified during its
        owner's queries) and what the socket holds now. True when our queues' settings changed
        (the caller reads them, out of the notifies() generator)."""
        for notify in conn.notifies(timeout=0):
            if notify.channel == store.SETTINGS_CHANNEL:
                if notify.payload in self.queues:
                    return True
                continue
            wake = store.parse_wake(notify.payload)
            if wake.queue in self.queues:
                self.hearer.enqueued(wake)
        return False

    def readable(self, conn: psycopg.Connection[Any], timeout: float) -> bool:
        """Wait up to timeout for the server to send something; False also when interrupted. On the
        socket itself: psycopg's own notifies(timeout) wakes every 100 ms and spins on poll(0)
        through the last millisecond before its deadline, which was most of an idle supervisor's
        CPU (docs/benchmarks.md)."""
        if timeout <= 0:
            return False
        waiting = select.poll()
        waiting.register(conn.fileno(), select.POLLIN)
        if self.interrupt is not None:
            waiting.register(self.interrupt.fileno(), select.POLLIN)
        ready = {fd for fd, _ in waiting.poll(math.ceil(timeout * 1000))}
        if self.interrupt is not None and self.interrupt.fileno() in ready:
            drain(self.interrupt)
            return False  # what the server sent meanwhile is heard at the next run_once
        return bool(ready)

    @staticmethod
    def own_connection(conninfo: str) -> psycopg.Connection[Any]:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)

    @staticmethod
    def django_connection() -> psycopg.Connection[Any]:
        """This thread's Django connection, in autocommit between its owner's transactions. What
        is notified while its owner runs a query waits in psycopg's backlog for notifies()."""
        connection.ensure_connection()
        conn: psycopg.Connection[Any] = connection.connection
        store.name_listener(conn)
        return conn

    def run_once(self, timeout: float = 1.0) -> None:
        """Wait up to timeout for notifications; (re)connect first when needed."""
        try:
            if self.conninfo is None and self.conn is not None and self.conn is not connection.connection:
                # The Django connection was closed (a fork, a reset after an error): its LISTENs
                # went with it, and notifications meanwhile too.
                logger.info("listener_disconnected error=its connection was closed: listening again")
                self.conn = None
                self.hearer.missed()
            if self.conn is None:
                self.connect()
            assert self.conn is not None
            # As psycopg's notifies(timeout) did: hand on what comes until the timeout, unless our
            # queues' settings changed (they are read at once, out of the generator).
            deadline = time.monotonic() + timeout
            changed = self.hear(self.conn)
            while not changed and self.readable(self.conn, deadline - time.monotonic()):
                changed = self.hear(self.conn)
            if changed:
                # The settings first, then the wake: woken before, a producer would claim a resumed
                # queue with the old view (nothing), and the enqueue channel's notification that came
                # with the change may be dropped with the generator.
                self.hearer.settings_changed(self.conn)
                self.hearer.missed()
            if time.monotonic() - self.last_checked > self.idle_check:
                self.hearer.idle(self.conn)
                self.last_checked = time.monotonic()
        except (psycopg.Error, *db.CONNECTION_ERRORS) as exc:  # any error on the connection: reconnect
            delay = self.backoff.next()
            logger.warning("listener_disconnected error=%s retry_in=%.1fs", exc, delay)
            self.close()
            self.hearer.missed()  # the workers poll while we reconnect
            self.stop.wait(delay)

    def close(self) -> None:
        if self.conn is not None:
            if self.conninfo is None:
                db.reset_connection()
            else:
                try:
                    self.conn.close()
                except psycopg.Error:
                    logger.debug("closing the listener connection failed", exc_info=True)
            self.conn = None


def drain(sock: socket.socket) -> None:
    """Read what a non-blocking socket holds, to its end."""
    with contextlib.suppress(BlockingIOError):
        while sock.recv(4096):
            continue  # what it said does not matter: that it said something does


class WorkerHearer:
    """A lone worker's (no supervisor): wakes its rounds for its own wake-ups and hands its producer
    the flow view, read on the listener's connection."""

    def __init__(
        self,
        *,
        worker_id: UUID,
        queues: Collection[str],
        wake: threading.Event,
        on_settings: Callable[[store.FlowView], None],
    ) -> None:
        self.worker_id = worker_id
        self.queues = frozenset(queues)
        self.wake = wake
        self.on_settings = on_settings

    def settings_changed(self, conn: psycopg.Connection[Any]) -> None:
        self.on_settings(store.flow_view(conn, self.queues))

    def enqueued(self, wake: store.Wake) -> None:
        if wake.for_worker(self.worker_id):
            self.wake.set()

    def missed(self) -> None:
        self.wake.set()

    def idle(self, conn: psycopg.Connection[Any]) -> None:
        self.settings_changed(conn)  # also checks the idle connection
