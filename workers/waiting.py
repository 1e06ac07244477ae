"""Waiting: whether enqueues should wake this worker. A worker left with free slots after a round
marks itself waiting (queries.sql mark_worker_waiting) and claims once more; one whose slots are
all taken clears the mark, so that producers commit without NOTIFY while every worker is busy.
Only changes are written: a busy worker's rounds, or an idle one's, add no statement."""

from __future__ import annotations

from workers.producer import Producer

RETRY_FIRST = 0.005
"""Seconds before claiming again when an enqueue held the mark back (then doubled, to RETRY_MOST)."""
RETRY_MOST = 0.25
"""At most this long between tries (or the poll interval, if shorter): a long transaction that
enqueued holds the mark back for as long as it is open, and meanwhile enqueues on the worker's other
queues do not notify it."""


class Waiting:
    def __init__(self, producer: Producer, *, enabled: bool, poll_interval: float) -> None:
        self.producer = producer
        self.enabled = enabled
        """TASKQUEUE["NOTIFY"]: off, nothing notifies and the mark would serve nobody."""
        self.poll_interval = poll_interval
        self.marked = False
        self.retry = RETRY_FIRST

    def after_round(self, *, free_slots: int) -> float | None:
        """After a claim round: seconds until the next round (0: at once), or None for the poll."""
        if not self.enabled or not self.producer.healthy:
            return None
        if free_slots == 0:
            if self.marked:
                # Taken as cleared even when the answer is lost (it may have committed): marked
                # again when idle, an extra write; believed marked, never notified again.
                self.producer.set_waiting(False)
                self.marked = False
            return None
        if self.marked:
            return None
        if self.producer.set_waiting(True):
            self.marked = True
            self.retry = RETRY_FIRST
            return 0.0  # a task enqueued before the mark was not announced to us: claim once more
        # An enqueue is under way (or the database is away): it may not notify, so claim again soon.
        delay, self.retry = self.retry, min(self.retry * 2, self.poll_interval, RETRY_MOST)
        return delay
