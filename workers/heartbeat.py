"""Heartbeat: keeps this worker's row fresh and notices when the reaper declared it LOST."""

from __future__ import annotations

import logging
from collections.abc import Callable
from uuid import UUID

from queueapp import store
from workers import db

logger = logging.getLogger(__name__)


class Heartbeat:
    name = "heartbeat"

    def __init__(self, worker_id: UUID, *, on_lost: Callable[[], None]) -> None:
        self.worker_id = worker_id
        self.on_lost = on_lost

    def run_once(self) -> bool:
        """Beat once; False when the worker is LOST (on_lost was called) or the database is away."""
        try:
            alive = store.beat_worker(self.worker_id)
        except db.CONNECTION_ERRORS as exc:
            # Keep trying: a short outage is survivable; a long one gets us reaped, which we see here.
            logger.warning("heartbeat_failed worker=%s error=%s", self.worker_id, exc)
            db.reset_connection()
            return False
        if not alive:
            logger.error("worker_lost worker=%s: marked LOST by a reaper; stopping", self.worker_id)
            self.on_lost()
        return alive
