"""Listener: one dedicated autocommit connection LISTENing for enqueues; a hint, never the only path.

It reconnects and re-LISTENs after any connection loss (and wakes the producer then, since
notifications sent meanwhile are gone), and checks its idle connection now and then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

import psycopg

from queueapp import store
from workers import db

logger = logging.getLogger(__name__)


class Listener:
    name = "listener"

    def __init__(
        self,
        conninfo: str,
        *,
        queues: Collection[str],
        wake: threading.Event,
        stop: threading.Event,
        on_settings: Callable[[store.FlowView], None],
        idle_check: float = 5.0,
    ) -> None:
        self.conninfo = conninfo
        self.queues = frozenset(queues)
        self.wake = wake
        self.stop = stop
        self.idle_check = idle_check
        self.on_settings = on_settings
        self.conn: psycopg.Connection | None = None
        self.last_checked = time.monotonic()
        self.backoff = db.Backoff()

    def connect(self) -> None:
        conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
        conn.execute(f"LISTEN {store.SETTINGS_CHANNEL}")
        self.conn = conn
        self.look_at_settings()  # changes from here on are notified
        conn.execute(f"LISTEN {store.NOTIFY_CHANNEL}")
        self.backoff.reset()
        self.last_checked = time.monotonic()
        logger.info("listening channel=%s", store.NOTIFY_CHANNEL)
        self.wake.set()  # anything enqueued while we were away was not announced to us

    def run_once(self, timeout: float = 1.0) -> None:
        """Wait up to timeout for notifications; (re)connect first when needed."""
        try:
            if self.conn is None:
                self.connect()
            assert self.conn is not None
            changed = False
            for notify in self.conn.notifies(timeout=timeout):
                if notify.payload in self.queues:
                    if notify.channel == store.SETTINGS_CHANNEL:
                        changed = True
                        break  # to query the connection, out of its notifies() generator
                    self.wake.set()
            if changed:
                # The producer's view first, then the wake: woken before, it would claim a resumed
                # queue with the old view (nothing), and the enqueue channel's notification that came
                # with the change may be dropped with the generator.
                self.look_at_settings()
                self.wake.set()
            if time.monotonic() - self.last_checked > self.idle_check:
                self.look_at_settings()  # also checks the idle connection
                self.last_checked = time.monotonic()
        except psycopg.Error as exc:  # any error on a connection that only listens: reconnect
            delay = self.backoff.next()
            logger.warning("listener_disconnected error=%s retry_in=%.1fs", exc, delay)
            self.close()
            self.wake.set()  # the producer polls while we reconnect
            self.stop.wait(delay)

    def look_at_settings(self) -> None:
        """Tell the producer which of our queues are flow-controlled (it claims those apart)."""
        assert self.conn is not None
        self.on_settings(store.flow_view(self.conn, self.queues))

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                logger.debug("closing the listener connection failed", exc_info=True)
            self.conn = None
