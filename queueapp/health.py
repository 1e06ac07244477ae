"""What the probes and /api/health say: whether this service can serve (the database answers and
its migrations are applied), and whether the queue is healthy, degraded or unhealthy, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor

from queueapp import conf, models, reads, store
from queueapp.states import TERMINAL_STATUSES

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"

_migrated: set[str] = set()  # aliases found fully migrated: migrations are never unapplied under us


@dataclass(frozen=True)
class Readiness:
    database_reachable: bool
    reasons: list[str]
    """Why this process cannot serve; empty when it is ready."""


def readiness(using: str = DEFAULT_DB_ALIAS) -> Readiness:
    """Ready when the database answers and every migration is applied."""
    try:
        store.database_now(using=using)
        missing = [] if using in _migrated else unapplied_migrations(using)
    except DatabaseError as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Readiness(False, [f"database unreachable: {first_line}"])
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return Readiness(True, [f"migrations not applied: {shown} (run manage.py migrate)"])
    _migrated.add(using)
    return Readiness(True, [])


def unapplied_migrations(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    executor = MigrationExecutor(connections[using])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [f"{migration.app_label}.{migration.name}" for migration, _ in plan]


@dataclass
class Report:
    """/api/health's answer: a verdict, its reasons, and the figures it was drawn from."""

    status: str
    reasons: list[str]
    figures: dict[str, Any] = field(default_factory=dict)


def queue_reasons(overview: dict[str, dict[str, Any]], workers: list[tuple[models.Worker, str]]) -> list[str]:
    """Why the queue is degraded: READY tasks that no live worker listens for, a READY task waiting
    longer than TASKQUEUE["HEALTH_MAX_READY_AGE"], a due SCHEDULED task not made READY for as long
    (no process runs the stager), workers that stopped beating and are not reaped."""
    max_age = conf.get().health_max_ready_age
    listened = {queue for worker, state in workers if state == "alive" for queue in worker.queues}
    reasons = []
    for queue, entry in sorted(overview.items()):
        ready = entry["counts"].get(models.TaskStatus.READY, 0)
        if ready and queue not in listened:
            reasons.append(f"queue {queue!r} has {ready} READY task(s) and no live worker listening on it")
        oldest = entry["oldest_ready_seconds"]
        if oldest is not None and oldest > max_age:
            reasons.append(
                f"queue {queue!r}: the oldest READY task has waited {oldest:.0f} s "
                f"(more than TASKQUEUE_HEALTH_MAX_READY_AGE={max_age:g} s)"
            )
        unstaged = entry["oldest_unstaged_seconds"]
        if unstaged is not None and unstaged > max_age:
            reasons.append(
                f"queue {queue!r}: a deferred or retrying task has been due for {unstaged:.0f} s and is "
                f"still SCHEDULED (more than TASKQUEUE_HEALTH_MAX_READY_AGE={max_age:g} s): does a worker "
                "run the fleet's housekeeper, which stages due tasks (the queueapp_housekeeper table)?"
            )
    stale = sum(1 for _, state in workers if state == "stale")
    if stale:
        reasons.append(
            f"{stale} worker(s) stopped beating more than TASKQUEUE_STALE_AFTER ago and are not reaped "
            "yet: is a reaper running (runworker or manage.py reap_stale)?"
        )
    return reasons


def report(window_minutes: int) -> Report:
    """The queue's verdict; unhealthy when this service is not ready."""
    ready = readiness()
    if ready.reasons:
        return Report(
            UNHEALTHY, ready.reasons, {"database": "ok" if ready.database_reachable else "unavailable"}
        )
    now = store.database_now()
    overview = store.queue_overview()
    workers = [(worker, reads.worker_health(worker, now)) for worker in reads.list_workers()]
    totals = reads.summary({queue: entry["counts"] for queue, entry in overview.items()})
    finished = reads.throughput(now, window_minutes)
    reasons = queue_reasons(overview, workers)
    oldest = [e["oldest_ready_seconds"] for e in overview.values() if e["oldest_ready_seconds"] is not None]
    return Report(
        DEGRADED if reasons else HEALTHY,
        reasons,
        {
            "database": "ok",
            "live_workers": sum(1 for _, state in workers if state == "alive"),
            "pending": {status: totals.get(status, 0) for status in models.LIVE_STATUSES},
            "completed": {s: finished.get(s, 0) for s in TERMINAL_STATUSES},
            "oldest_ready_age_seconds": max(oldest, default=None),
            "timestamp": now,
        },
    )
