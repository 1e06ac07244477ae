"""Stager: SCHEDULED tasks that have come due become READY, and their queues are notified.

Deferred tasks and tasks waiting for a retry stay out of the claim's index until then, so a million
of them cost the claim nothing. Every lone worker and every supervisor (for its children) runs one;
they share the work (SKIP LOCKED), and the notification names waiting workers of the queue.
"""

from __future__ import annotations

import logging

from queueapp import store
from workers import db

logger = logging.getLogger(__name__)


class Stager:
    name = "stager"

    def __init__(self, *, batch: int = 1000) -> None:
        self.batch = batch

    def run_once(self) -> int | None:
        """Stage everything due, a batch per transaction; how many tasks, or None if the database is away."""
        total = db.unless_unreachable(self.stage_all, "stage_failed")
        if total:
            logger.debug("staged tasks=%s", total)
        return total

    def stage_all(self) -> int:
        total = 0
        while True:
            staged = sum(store.stage_tasks(limit=self.batch).values())
            total += staged
            if staged < self.batch:
                return total
