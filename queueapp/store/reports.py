"""Read-only figures for the API, the console and /metrics, each bounded in cost."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from django.db import connections, transaction

from queueapp.sql import QUERIES
from queueapp.states import TaskStatus


def count_ready(queues: Collection[str], *, cap: int, using: str = "default") -> int:
    """READY tasks in these queues, counting no further than cap."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["count_ready"], {"queues": list(queues), "cap": cap})
        return int(cursor.fetchone()[0])


def database_now(*, using: str = "default") -> datetime:
    """The database's clock: the one every queue time is measured on."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["database_now"])
        value: datetime = cursor.fetchone()[0]
    return value


def pickup_latency(*, since: datetime, using: str = "default") -> tuple[float | None, float | None]:
    """(p50, p95) seconds from due to start for first attempts finished since `since`."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["pickup_latency"], {"since": since})
        p50, p95 = cursor.fetchone()
    return (float(p50) if p50 is not None else None, float(p95) if p95 is not None else None)


def finished_per_minute(
    *, since: datetime, using: str = "default"
) -> list[tuple[datetime, int, int, float | None, float | None]]:
    """(minute, successful, failed, latency p50, latency p95) for each minute with finished tasks."""
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(QUERIES["report_plan"])
        cursor.execute(QUERIES["finished_per_minute"], {"since": since})
        return [(m, ok, bad, p50, p95) for m, ok, bad, p50, p95 in cursor.fetchall()]


def queue_overview(*, using: str = "default") -> dict[str, dict[str, Any]]:
    """{queue: {"counts": {live status: n}, "oldest_ready_seconds": float | None,
    "oldest_unstaged_seconds": float | None}}: the latter, how long the oldest SCHEDULED task has been
    due (the stager makes due tasks READY within about a second)."""
    overview: dict[str, dict[str, Any]] = {}
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["queue_overview"])
        for queue, status, count, oldest, unstaged in cursor.fetchall():
            entry = overview.setdefault(
                queue, {"counts": {}, "oldest_ready_seconds": None, "oldest_unstaged_seconds": None}
            )
            entry["counts"][status] = count
            if status == TaskStatus.READY and oldest is not None:
                entry["oldest_ready_seconds"] = float(oldest)
            if unstaged is not None:
                entry["oldest_unstaged_seconds"] = float(unstaged)
    return overview


def estimated_tasks(*, using: str = "default") -> int:
    """About how many tasks there are, live and finished (the planner's estimates)."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["estimated_tasks"])
        return max(int(cursor.fetchone()[0]), 0)


def finished_by_queue(*, since: datetime, using: str = "default") -> dict[str, dict[str, int]]:
    """{queue: {terminal status: tasks finished since `since`}}."""
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(QUERIES["report_plan"])
        cursor.execute(QUERIES["finished_by_queue"], {"since": since})
        finished: dict[str, dict[str, int]] = {}
        for queue, status, count in cursor.fetchall():
            finished.setdefault(queue, {})[status] = count
    return finished
