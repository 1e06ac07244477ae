"""Housekeeper: one process per database runs the stager and the scheduler for the whole fleet.

Every lone worker and every supervisor ran both, each once a second: a fleet of 20 hosts made 40
statements a second to find, mostly, nothing. Now they take turns holding the housekeeping row
(queueapp_housekeeper, take_housekeeping in queries.sql): its holder runs them, and renews the row
every TRY_EVERY seconds for TTL seconds; every other process tries to take it as often, and does
once it expired (its holder died or lost the database: within TTL + TRY_EVERY seconds) or was given
up (its holder stopped: within TRY_EVERY seconds). The reaper stays with every process: it is the
fleet's safety net, and runs every 15 s.

Holding the row is a speed-up, not a lock: should two processes both believe they hold it (a holder
paused past its TTL), the stager's SKIP LOCKED and the scheduler's one row per tick make the work
come out the same, as when every process ran both.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from uuid import UUID

from queueapp import store
from workers import db
from workers.services import SLACK, Service

logger = logging.getLogger(__name__)

TTL = 5.0
"""Seconds a holder's row lasts unless renewed: with TRY_EVERY, how long the stager and the scheduler
may pause after their holder dies (schedules allow 10 s of lateness by default: --schedule-grace)."""
TRY_EVERY = TTL / 2


def for_services(holder: UUID, *intervals: float) -> Housekeeping:
    """The housekeeping of services run every `intervals` seconds, which renew the row as they ask
    for it: it lasts at least twice the shortest of them, so that its holder renews it before it runs
    out. A STAGE_INTERVAL and a SCHEDULE_INTERVAL both beyond TTL let it lapse between two runs, and
    processes took it from each other in turn."""
    ttl = max(TTL, 2 * min(intervals))
    return Housekeeping(holder, ttl=ttl, try_every=ttl / 2)


class Housekeeping:
    """Whether this process holds the housekeeping row, asked by each service it may run (a lone
    worker's run in threads of their own: hence the lock)."""

    def __init__(
        self, holder: UUID, *, ttl: float = TTL, try_every: float = TRY_EVERY, early: float = SLACK
    ) -> None:
        self.holder = holder
        self.ttl = ttl
        self.try_every = try_every
        self.early = early
        """Seconds before its time a try may come: a supervisor's Rotation runs its stager and
        scheduler up to SLACK early, with another service, and the try comes with them (else it
        would wait for a wake-up of its own, or for the stager's next run)."""
        self.lock = threading.Lock()
        self.held_until = 0.0
        """time.monotonic() when the row this process holds expires (as of the last take or renewal)."""
        self.next_try = 0.0

    def held(self) -> bool:
        """True while this process holds the row: taken or renewed at most every try_every seconds."""
        with self.lock:
            if self.try_due():
                self.attempt(time.monotonic())
            return time.monotonic() < self.held_until

    def try_due(self) -> bool:
        """held() would try for the row now (a statement)."""
        return time.monotonic() + self.early >= self.next_try

    def try_counting(self, queues: Sequence[str], cap: int) -> int | None:
        """Try for the row now, and count the READY tasks of queues up to cap in the same statement
        (a supervisor's poll for its children, workers.wakeups.ChildPoll: one round trip, not two);
        None when the database could not be reached."""
        with self.lock:
            return self.attempt(time.monotonic(), queues, cap)

    def paused_until(self) -> float:
        """time.monotonic() of the next try while another process holds the row (until then held()
        says False without a statement); 0 while this one holds it."""
        with self.lock:
            return 0.0 if time.monotonic() < self.held_until else self.next_try

    def attempt(self, sent_at: float, queues: Sequence[str] = (), cap: int = 0) -> int | None:
        """Try for the row (and count, see try_counting); the count, or None if the database is away."""
        self.next_try = sent_at + self.try_every
        outcome = db.unless_unreachable(
            lambda: self.take(queues, cap), "housekeeping_try_failed holder=%s", self.holder
        )
        if outcome is None:
            return None  # the database is away: what this process held lasts until it expires
        if outcome.taken is None:  # another process holds it
            if sent_at < self.held_until:
                logger.warning("housekeeping_lost holder=%s: another process took it", self.holder)
            self.held_until = 0.0
            return outcome.ready
        if outcome.taken:
            logger.info(
                "housekeeping_taken holder=%s: this process runs the stager and scheduler", self.holder
            )
        self.held_until = sent_at + self.ttl  # from before the statement: never later than the database's
        return outcome.ready

    def take(self, queues: Sequence[str], cap: int) -> store.HousekeepingTry:
        return store.take_housekeeping(
            holder=self.holder,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            ttl=self.ttl,
            count_ready=queues,
            cap=cap,
        )

    def give_up(self) -> None:
        """At shutdown: another process takes the row at its next try instead of after the TTL."""
        with self.lock:
            if time.monotonic() >= self.held_until:
                return
            self.held_until = 0.0

        def give_up() -> bool:
            store.give_up_housekeeping(holder=self.holder)
            return True

        if db.unless_unreachable(give_up, "housekeeping_give_up_failed holder=%s", self.holder):
            logger.info("housekeeping_given_up holder=%s", self.holder)


class Housekept:
    """A service that runs only in the process holding the housekeeping row."""

    def __init__(self, service: Service, housekeeping: Housekeeping) -> None:
        self.service = service
        self.housekeeping = housekeeping
        self.name = service.name

    def run_once(self) -> object:
        return self.service.run_once() if self.housekeeping.held() else None

    def paused_until(self) -> float:
        """Its loop need not come back before the next try for the row (workers.services.next_run)."""
        return self.housekeeping.paused_until()
