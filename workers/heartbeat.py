"""Heartbeat: keeps this worker's row fresh, renews its lease, and notices when the reaper declared
it LOST."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from uuid import UUID

from queueapp import store
from workers import db
from workers.lease import Lease

logger = logging.getLogger(__name__)


class Heartbeat:
    name = "heartbeat"

    def __init__(
        self,
        worker_id: UUID,
        *,
        on_lost: Callable[[], None],
        parent_pid: int | None = None,
        on_orphaned: Callable[[], None] | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.on_lost = on_lost
        self.parent_pid = parent_pid
        """The supervisor's pid, for a child: if it dies, the child stops too."""
        self.on_orphaned = on_orphaned
        self.lease = lease
        """Renewed by every beat that reaches the database."""

    def run_once(self) -> bool:
        """Beat once; False when the worker is LOST (on_lost was called) or the database is away."""
        if self.parent_pid is not None and os.getppid() != self.parent_pid and self.on_orphaned:
            logger.error("supervisor_gone worker=%s parent_pid=%s: stopping", self.worker_id, self.parent_pid)
            self.on_orphaned()
            self.on_orphaned = None  # once: the worker keeps beating while it drains
        if self.lease is not None and not self.lease.run_once():
            return False  # written off by its own clock (paused, cut off): a late beat cannot undo that
        sent_at = time.monotonic()
        # A short outage is survivable (the next beat tries again); a long one ends the lease.
        alive = db.unless_unreachable(
            lambda: store.beat_worker(self.worker_id), "heartbeat_failed worker=%s", self.worker_id
        )
        if alive is None:
            return False
        if alive and self.lease is not None:
            self.lease.renew(sent_at)
        if not alive:
            logger.error("worker_lost worker=%s: marked LOST by a reaper; stopping", self.worker_id)
            self.on_lost()
        return alive
