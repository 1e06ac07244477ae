"""Scheduler: enqueues the due ticks of every schedule. Every worker runs one, with no leader:
racing schedulers insert each tick once (queueapp/schedules.py), and all times are the database's.

A pass reads the due schedules, plans each (queueapp.cron.plan: ticks on time, missed ones by
catch_up), enqueues its ticks and moves its cursor forward in one transaction per schedule: a
worker killed mid-pass leaves that schedule as it was, for the next pass of any worker.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

from django.db import transaction
from django.tasks.exceptions import InvalidTask

from queueapp import cron, schedules, store
from workers import db, metrics

logger = logging.getLogger(__name__)

TICK_RETENTION = 7 * 24 * 3600.0
"""Seconds a tick row is kept (each schedule's latest is kept whatever its age)."""


class Scheduler:
    name = "scheduler"

    def __init__(self, *, grace: float, purge_every: int = 600) -> None:
        self.grace = grace
        self.purge_every = purge_every
        self.passes = 0

    def run_once(self) -> Counter[str] | None:
        """One pass: counts of ticks by outcome, or None if the database is away."""
        counts = db.unless_unreachable(self.run_due, "schedule_failed")
        if counts is not None:
            self.passes += 1
        return counts

    def run_due(self) -> Counter[str]:
        if self.passes == 0:
            schedules.sync_declared(store.database_now())
        counts: Counter[str] = Counter()
        for schedule in store.due_schedules():
            try:
                counts.update(self.run_schedule(schedule))
            except Exception as exc:
                if db.connection_lost(exc):
                    raise  # the database is away: the whole pass waits for it (run_once)
                # One schedule's error (deleted under us, a zone this image lacks, a unique key held
                # too long) must not end the scheduler, and with it every worker of the fleet: its
                # cursor stays where it was, and the next pass tries again.
                logger.exception(
                    "schedule_error schedule=%s: its ticks wait for the next pass", schedule.name
                )
                counts["error"] += 1
        if self.passes % self.purge_every == 0:
            store.purge_schedule_ticks(older_than=TICK_RETENTION)
        return counts

    def run_schedule(self, schedule: store.DueSchedule) -> Counter[str]:
        plan = cron.plan(
            schedule.cron,
            schedule.timezone,
            next_run_at=schedule.next_run_at,
            now=schedule.now,
            grace=self.grace,
            catch_up=schedule.catch_up,
            limit=schedule.catch_up_limit,
        )
        counts: Counter[str] = Counter(missed=plan.missed)
        try:
            with transaction.atomic():
                for tick in plan.ticks:
                    task_id = schedules.enqueue_tick(schedule, tick)
                    counts["enqueued" if task_id is not None else "duplicate"] += 1
                store.advance_schedule(schedule.id, plan.next_run_at)
        except InvalidTask as exc:
            # Not registered in this worker, or arguments refused: said loudly, and the ticks count
            # as failed; the cursor moves on so the log says it once per tick, not once per pass.
            logger.error("schedule_task_refused schedule=%s error=%s", schedule.name, exc)
            store.advance_schedule(schedule.id, plan.next_run_at)
            counts = Counter(missed=plan.missed, failed=len(plan.ticks))
        for outcome, count in counts.items():
            if count:
                metrics.SCHEDULE_TICKS.labels(schedule.name, outcome).inc(count)
        if plan.missed:
            logger.warning("schedule_ticks_missed schedule=%s missed=%s", schedule.name, plan.missed)
        logger.debug("schedule_pass schedule=%s %s", schedule.name, _text(counts, plan.next_run_at))
        return counts


def _text(counts: Counter[str], next_run_at: datetime) -> str:
    return (
        " ".join(f"{outcome}={count}" for outcome, count in sorted(counts.items()))
        + f" next={next_run_at.isoformat()}"
    )
