"""Schedules and their ticks: which are due, one tick claimed once, the cursor moved forward."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections

from queueapp.sql import QUERIES


@dataclass(frozen=True, slots=True, kw_only=True)
class DueSchedule:
    id: int
    name: str
    task_path: str
    cron: str
    timezone: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue_name: str
    priority: int
    catch_up: str
    catch_up_limit: int
    next_run_at: datetime
    now: datetime
    """The database's clock when the schedule was read: ticks up to it are due."""


def due_schedules(*, using: str = "default") -> list[DueSchedule]:
    """Enabled schedules whose next tick has come (by the database's clock)."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["due_schedules"])
        return [_due(row) for row in cursor.fetchall()]


def _due(row: tuple[Any, ...]) -> DueSchedule:
    (
        id_,
        name,
        task_path,
        cron,
        zone,
        args,
        kwargs,
        queue_name,
        priority,
        catch_up,
        limit,
        next_run_at,
        now,
    ) = row
    return DueSchedule(
        id=id_,
        name=name,
        task_path=task_path,
        cron=cron,
        timezone=zone,
        args=json.loads(args),  # Django's connections load jsonb as text
        kwargs=json.loads(kwargs),
        queue_name=queue_name,
        priority=priority,
        catch_up=catch_up,
        catch_up_limit=limit,
        next_run_at=next_run_at,
        now=now,
    )


def claim_tick(
    *, schedule_id: int, tick_at: datetime, manual: bool = False, using: str = "default"
) -> int | None:
    """The tick's id if this call inserted it; None if another scheduler had (waits for it first)."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["claim_tick"], {"schedule_id": schedule_id, "tick_at": tick_at, "manual": manual}
        )
        row = cursor.fetchone()
    return row[0] if row else None


def set_tick_task(tick_id: int, task_id: int, *, using: str = "default") -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["set_tick_task"], {"id": tick_id, "task_id": task_id})


def advance_schedule(schedule_id: int, next_run_at: datetime, *, using: str = "default") -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["advance_schedule"], {"id": schedule_id, "next_run_at": next_run_at})


def purge_schedule_ticks(*, older_than: float, using: str = "default") -> int:
    """Delete ticks enqueued more than older_than seconds ago, except each schedule's latest."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["purge_schedule_ticks"], {"older_than": older_than})
        return int(cursor.rowcount)


def upsert_code_schedule(values: dict[str, Any], *, using: str = "default") -> None:
    """Write a schedule declared in code (values: its columns, args and kwargs as JSON text)."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["upsert_code_schedule"], values)


def drop_code_schedules(keep: list[str], *, using: str = "default") -> int:
    """Delete code schedules whose name is not in keep (no longer declared)."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["drop_code_schedules"], {"names": keep})
        return int(cursor.rowcount)
