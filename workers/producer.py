"""Producer: a worker's rounds. Each records the successes since the last round and claims as many
due tasks as there are free execution slots (never more), in one round trip and one commit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from uuid import UUID

from queueapp import store
from workers import db, metrics

logger = logging.getLogger(__name__)


class Producer:
    name = "producer"

    def __init__(
        self,
        *,
        worker_id: UUID,
        queues: Sequence[str],
        prepare: bool = True,
        limits: store.StatementLimits | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.session = store.WorkerSession(worker_id=worker_id, queues=queues, prepare=prepare, limits=limits)
        self.healthy = True
        """False after a failed round: the database is away and the worker should back off."""

    def run_once(
        self, free_slots: int, successes: Sequence[store.Success] = ()
    ) -> tuple[dict[int, str], list[store.TaskRow]] | None:
        """(recorded status by task id, claimed rows), or None when the database could not be
        reached: nothing was recorded or claimed, and the successes are to be sent again."""
        done = db.unless_unreachable(
            lambda: self.session.round(successes, free_slots),
            "round_failed worker=%s",
            self.worker_id,
            reset=self.session.close,
            level=logging.WARNING if self.healthy else logging.DEBUG,  # once per outage
        )
        if done is None:
            self.healthy = False
            return None
        statuses, rows = done
        if not self.healthy:
            logger.info("round_recovered worker=%s", self.worker_id)
        self.healthy = True
        for row in rows:
            logger.debug("task_started id=%s task=%s attempt=%s", row.id, row.task_path, row.attempts)
            if row.attempts == 1 and row.started_at is not None:
                metrics.PICKUP_LATENCY.observe(max((row.started_at - row.run_after).total_seconds(), 0.0))
        return statuses, rows

    def reconcile(
        self, held: Sequence[int], successes: Sequence[store.Success]
    ) -> tuple[list[int], dict[int, str]] | None:
        """WorkerSession.reconcile, or None when the database is still away."""
        return db.unless_unreachable(
            lambda: self.session.reconcile(held, successes),
            "reconcile_failed worker=%s",
            self.worker_id,
            reset=self.session.close,
        )

    def set_waiting(self, waiting: bool) -> bool | None:
        """WorkerSession.set_waiting, or None when the database could not be reached."""
        return db.unless_unreachable(
            lambda: self.session.set_waiting(waiting),
            "set_waiting_failed worker=%s",
            self.worker_id,
            reset=self.session.close,
            level=logging.DEBUG,  # the round says so once per outage
        )

    def close(self) -> None:
        self.session.close()
