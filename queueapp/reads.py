"""Read-only views of the queue for the API and the console: lists, workers, health, statistics.

These read through the ORM: lists through the view of every task (models.Task), counts of what is
waiting or running from the live table only (models.LiveTask), throughput from history
(models.TaskHistory) over a recent window, so that no read walks all of history. Every state change
goes through store.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from queueapp import conf, cron, models, store


@dataclass(frozen=True, kw_only=True)
class TaskFilter:
    status: str | None = None
    queue: str | None = None
    task_path: str | None = None
    enqueued_after: dt.datetime | None = None
    enqueued_before: dt.datetime | None = None
    unique_key: str | None = None


def list_tasks(
    filters: TaskFilter, *, before_id: int | None, limit: int
) -> tuple[list[models.Task], int | None]:
    """Newest first, keyset-paginated on id: (page, the id to continue before, or None at the end)."""
    tasks: QuerySet[models.Task] = models.Task.objects.all()
    if filters.status:
        tasks = tasks.filter(status=filters.status)
    if filters.queue:
        tasks = tasks.filter(queue_name=filters.queue)
    if filters.task_path:
        tasks = tasks.filter(task_path=filters.task_path)
    if filters.enqueued_after:
        tasks = tasks.filter(enqueued_at__gte=filters.enqueued_after)
    if filters.enqueued_before:
        tasks = tasks.filter(enqueued_at__lt=filters.enqueued_before)
    if filters.unique_key:
        tasks = tasks.filter(unique_key=filters.unique_key)
    if before_id is not None:
        tasks = tasks.filter(id__lt=before_id)
    page = list(tasks.order_by("-id")[: limit + 1])
    if len(page) > limit:
        return page[:limit], page[limit - 1].id
    return page, None


def worker_health(worker: models.Worker, now: dt.datetime) -> str:
    """ALIVE workers whose heartbeat is older than STALE_AFTER show as stale until a reaper runs."""
    stale_after = dt.timedelta(seconds=conf.get().stale_after)
    if worker.state == models.WorkerState.ALIVE and now - worker.last_heartbeat_at > stale_after:
        return "stale"
    return worker.state.lower()


def workers_with_running_counts() -> QuerySet[models.Worker]:
    """Workers, each with `running`: how many tasks it holds. A correlated count per worker reads
    task_running_worker_idx; a join with a filter would hash the whole task table."""
    running = (
        models.LiveTask.objects.filter(worker=OuterRef("pk"), status=models.TaskStatus.RUNNING)
        .order_by()
        .values("worker")
        .annotate(n=Count("*"))
        .values("n")
    )
    return models.Worker.objects.annotate(running=Coalesce(Subquery(running), 0))


def running_tasks(worker_id: uuid.UUID, *, limit: int) -> list[models.LiveTask]:
    """The tasks a worker is running, oldest start first (task_live_running_queue_idx)."""
    return list(
        models.LiveTask.objects.filter(worker_id=worker_id, status=models.TaskStatus.RUNNING).order_by(
            "started_at", "id"
        )[:limit]
    )


@dataclass(frozen=True)
class HousekeeperView:
    """Which process stages due tasks and runs the schedules for the fleet, as the console shows it."""

    hostname: str
    pid: int
    taken_at: dt.datetime
    expires_at: dt.datetime
    current: bool
    """False: its time ran out and nobody took it since (no process runs the stager now)."""


def housekeeper(now: dt.datetime) -> HousekeeperView | None:
    row = models.Housekeeper.objects.filter(role=store.HOUSEKEEPING).first()
    if row is None:
        return None
    return HousekeeperView(row.hostname, row.pid, row.taken_at, row.expires_at, row.expires_at > now)


def list_workers(*, include_stopped_since: dt.timedelta = dt.timedelta(hours=24)) -> list[models.Worker]:
    """Workers alive or stopping, and those that stopped or were lost recently, with running counts."""
    since = timezone.now() - include_stopped_since
    recent = (
        Q(state__in=[models.WorkerState.ALIVE, models.WorkerState.STOPPING])
        | Q(stopped_at__gte=since)
        | Q(last_heartbeat_at__gte=since)
    )
    return list(workers_with_running_counts().filter(recent).order_by("-started_at")[:500])


def status_counts() -> dict[str, dict[str, int]]:
    """{queue: {status: count}} of live tasks (SCHEDULED, READY, RUNNING)."""
    counts: dict[str, dict[str, int]] = {}
    for row in models.LiveTask.objects.values("queue_name", "status").annotate(n=Count("id")).order_by():
        counts.setdefault(row["queue_name"], {})[row["status"]] = row["n"]
    return counts


def throughput(now: dt.datetime, minutes: int) -> dict[str, int]:
    """Tasks that reached SUCCESSFUL / FAILED / CANCELLED in the last `minutes` minutes."""
    since = now - dt.timedelta(minutes=minutes)
    rows = (
        models.TaskHistory.objects.filter(finished_at__gte=since)
        .values("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {row["status"]: row["n"] for row in rows}


def pickup_latency(now: dt.datetime, minutes: int = 15) -> dict[str, float | None]:
    """p50/p95 seconds from due (run_after) to start, for first attempts that finished recently."""
    p50, p95 = store.pickup_latency(since=now - dt.timedelta(minutes=minutes))
    return {"p50": p50, "p95": p95}


def summary(counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    totals: dict[str, int] = {}
    for per_status in counts.values():
        for status, n in per_status.items():
            totals[status] = totals.get(status, 0) + n
    return totals


@dataclass(frozen=True)
class LastRun:
    """A schedule's latest tick and its task (status None: the task was purged)."""

    tick_at: dt.datetime
    manual: bool
    task_id: int | None
    status: str | None


def schedule_cursors() -> list[tuple[str, dt.datetime]]:
    """(name, next_run_at) of every enabled schedule."""
    enabled = models.Schedule.objects.filter(enabled=True, next_run_at__isnull=False)
    return [
        (name, next_run_at) for name, next_run_at in enabled.values_list("name", "next_run_at") if next_run_at
    ]


def list_schedules() -> list[models.Schedule]:
    """Every schedule by name, each with .last_run (LastRun or None)."""
    found = list(models.Schedule.objects.order_by("name"))
    latest = {
        tick.schedule_id: tick
        for tick in models.ScheduleTick.objects.filter(schedule__in=found)
        .order_by("schedule_id", "-tick_at")
        .distinct("schedule_id")
    }
    task_ids = [tick.task_id for tick in latest.values() if tick.task_id is not None]
    statuses = dict(models.Task.objects.filter(id__in=task_ids).values_list("id", "status"))
    for schedule in found:
        tick = latest.get(schedule.id)
        schedule.last_run = (  # type: ignore[attr-defined]
            LastRun(tick.tick_at, tick.manual, tick.task_id, statuses.get(tick.task_id or 0))
            if tick
            else None
        )
    return found


def schedule_out(schedule: models.Schedule) -> dict[str, Any]:
    """A schedule as the API and `manage.py schedules` show it."""
    last: LastRun | None = schedule.last_run  # type: ignore[attr-defined]
    return {
        "name": schedule.name,
        "task": schedule.task_path,
        "cron": schedule.cron,
        "description": cron.describe(schedule.cron),
        "timezone": schedule.timezone,
        "queue": schedule.queue_name,
        "priority": schedule.priority,
        "catch_up": schedule.catch_up,
        "catch_up_limit": schedule.catch_up_limit,
        "enabled": schedule.enabled,
        "source": schedule.source,
        "next_run_at": schedule.next_run_at if schedule.enabled else None,
        "last_run": last.__dict__ if last else None,
    }
