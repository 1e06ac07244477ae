"""Completer: records what the worker's tasks came to, in the main thread's rounds.

A round (workers.producer) records the successes waiting in the ledger and claims for the slots that
frees, in one transaction; the completer then reports each recorded attempt (task_finished, log,
metrics) and hands the claimed rows on. A round the database refuses is taken apart to find the
success it cannot hold; a round that failed for want of the database may have committed all the
same, so before the next one the completer asks what it did (reconcile).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from uuid import UUID

import psycopg

from queueapp import store
from workers import db
from workers.executor import Executor
from workers.ledger import Ledger
from workers.producer import Producer

logger = logging.getLogger(__name__)


class Completer:
    def __init__(
        self,
        *,
        worker_id: UUID,
        ledger: Ledger,
        producer: Producer,
        executor: Executor,
        dispatch: Callable[[list[store.TaskRow], list[store.TaskRow]], None],
    ) -> None:
        self.worker_id = worker_id
        self.ledger = ledger
        self.producer = producer
        self.executor = executor
        self.dispatch = dispatch
        """Hands the rows to run to the pool threads, given all the round claimed (before the
        recorded ones are reported)."""
        self.unreturned: list[store.TaskRow] = []
        """Claims to hand back (hand_back) that the database was away for: tried again each round."""
        self.uncertain = False
        """A round failed for want of the database: it may have committed all the same."""

    def round(self, *, claim: bool) -> int:
        """Record the successes so far and (if claim) claim for the free slots; how many were claimed."""
        if self.uncertain and not self.reconcile():
            return 0
        attempts, limit = self.ledger.take_successes(claim=claim)
        if not attempts and not limit:
            return 0
        self.executor.listen()
        successes = [attempt.success for attempt in attempts if attempt.success is not None]
        try:
            done = self.producer.run_once(limit, successes)
        except psycopg.Error as exc:  # refused, not unreachable: find the success it cannot hold
            if not successes:
                raise
            logger.warning("round_refused error=%s: recording %s successes one by one", exc, len(successes))
            for attempt in attempts:
                self.executor.record_alone(attempt)
            self.ledger.recorded(attempts)
            attempts = []
            done = self.producer.run_once(limit)  # the claim that round did not make
        if done is None:  # the database is away: what is not recorded yet goes in the next round
            self.uncertain = True
            self.ledger.put_back(attempts)
            return 0
        statuses, rows = done
        self.ledger.recorded(attempts)
        fresh, again = self.ledger.claimed(rows)
        self.unreturned += again
        if self.unreturned:
            self.hand_back()
        self.dispatch(fresh, rows)
        for attempt in attempts:
            self.executor.complete(attempt, statuses.get(attempt.row.id))
        self.producer.look_if_due()
        return len(rows)

    def hand_back(self) -> None:
        """Claims of tasks this worker runs under an attempt that a database crash undid: back to
        READY (kept for the next round while the database is away)."""
        claimed = [(row.id, row.attempts) for row in self.unreturned]
        released = db.unless_unreachable(
            lambda: store.release_tasks(worker_id=self.worker_id, claimed=claimed),
            "hand_back_failed worker=%s",
            self.worker_id,
        )
        if released is not None:
            self.unreturned = []
        logger.warning("claimed_again worker=%s tasks=%s handed_back=%s", self.worker_id, claimed, released)

    def reconcile(self) -> bool:
        """After a failed round, before the next: that round's COMMIT may have gone through with only
        its answer lost. Its claims (RUNNING under this worker, unknown here) are released; its
        successes that were recorded are reported as such, not sent again. False if still away."""
        pending = self.ledger.waiting_successes()
        found = self.producer.reconcile(
            self.ledger.held_ids(), [attempt.success for attempt in pending if attempt.success]
        )
        if found is None:
            return False
        released, statuses = found
        recorded = self.ledger.recorded_meanwhile(set(statuses))
        self.ledger.recorded(recorded)
        for attempt in recorded:
            self.executor.complete(attempt, statuses[attempt.row.id])
        if released or recorded:
            logger.warning(
                "round_reconciled worker=%s released=%s recorded=%s: the failed round had committed",
                self.worker_id,
                len(released),
                len(recorded),
            )
        self.uncertain = False
        return True
