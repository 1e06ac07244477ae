"""Reaper: marks workers whose heartbeat stopped as LOST and takes their tasks back; and, once an hour,
makes sure the history has its partitions for the days ahead."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from uuid import UUID

from queueapp import store
from workers import db, metrics

logger = logging.getLogger(__name__)

PARTITIONS_EVERY = 3600.0
"""Seconds between checks of the history's partitions (they are made a week ahead)."""


class Reaper:
    name = "reaper"

    def __init__(self, *, stale_after: float, backoff_base: float, backoff_max: float) -> None:
        self.stale_after = stale_after
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.partitions_checked: float | None = None

    def run_once(self, worker_ids: Sequence[UUID] = ()) -> store.ReapOutcome | None:
        """One guarded reap; worker_ids are reaped whatever their heartbeat (their process died)."""
        outcome = db.unless_unreachable(
            lambda: store.reap_workers(
                stale_after=self.stale_after,
                backoff_base=self.backoff_base,
                backoff_max=self.backoff_max,
                worker_ids=worker_ids,
            ),
            "reap_failed",
        )
        if outcome is None:
            return None
        self.keep_partitions()
        metrics.REAPED.labels("requeued").inc(outcome.tasks_requeued)
        metrics.REAPED.labels("failed").inc(outcome.tasks_failed)
        if outcome.workers_lost or outcome.tasks_requeued or outcome.tasks_failed:
            logger.warning(
                "reaped workers_lost=%s tasks_requeued=%s tasks_failed=%s",
                outcome.workers_lost,
                outcome.tasks_requeued,
                outcome.tasks_failed,
            )
        return outcome

    def keep_partitions(self) -> None:
        now = time.monotonic()
        if self.partitions_checked is not None and now - self.partitions_checked < PARTITIONS_EVERY:
            return
        if db.unless_unreachable(store.ensure_history_partitions, "history_partitions_failed") is not None:
            self.partitions_checked = now
