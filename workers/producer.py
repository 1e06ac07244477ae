"""Producer: claims as many due tasks as there are free execution slots, never more."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from uuid import UUID

from queueapp import store
from workers import db, metrics

logger = logging.getLogger(__name__)


class Producer:
    name = "producer"

    def __init__(self, *, worker_id: UUID, queues: Sequence[str]) -> None:
        self.worker_id = worker_id
        self.queues = list(queues)
        self.healthy = True
        """False after a failed claim: the database is away and the worker should back off."""

    def run_once(self, free_slots: int) -> list[store.TaskRow]:
        try:
            rows = store.claim_tasks(worker_id=self.worker_id, queues=self.queues, limit=free_slots)
        except db.CONNECTION_ERRORS as exc:
            if self.healthy:
                logger.warning("claim_failed error=%s", exc)
            self.healthy = False
            db.reset_connection()
            return []
        if not self.healthy:
            logger.info("claim_recovered worker=%s", self.worker_id)
        self.healthy = True
        for row in rows:
            logger.info("task_started id=%s task=%s attempt=%s", row.id, row.task_path, row.attempts)
            if row.attempts == 1 and row.started_at is not None:
                metrics.PICKUP_LATENCY.observe(max((row.started_at - row.run_after).total_seconds(), 0.0))
        return rows
