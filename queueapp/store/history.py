"""History: finished tasks in a table partitioned by finished_at, one partition per UTC day.

Partitions are made ahead of time (by every worker's reaper service, `reap_stale` and
`purge_tasks`), so that finishing a task never waits for DDL; a row whose day has no partition
lands in the default partition and is still found. Retention drops whole days and deletes only
what lies in a partition that is not wholly past the cutoff.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import DatabaseError, connections, transaction

from queueapp.sql import QUERIES

logger = logging.getLogger(__name__)

DAYS_AHEAD = 7
"""Partitions are kept this many days ahead of today (UTC)."""

_PREFIX = "queueapp_task_history_p"
_NAME = re.compile(rf"^{_PREFIX}(\d{{8}})$")


def partition_name(day: dt.date) -> str:
    return f"{_PREFIX}{day:%Y%m%d}"


def partition_day(name: str) -> dt.date | None:
    """The UTC day a partition holds, from its name; None for the default partition."""
    match = _NAME.match(name)
    return dt.datetime.strptime(match.group(1), "%Y%m%d").date() if match else None


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def _ddl(name: str, query: str) -> str:
    # Partition names are made here from dates only; quoted all the same.
    assert _NAME.match(name), name
    return query.replace("{partition}", f'"{name}"')


def history_partitions(*, using: str = "default") -> dict[str, int]:
    """{partition name: estimated rows}, the default partition included."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["history_partitions"])
        return {name: rows for name, rows in cursor.fetchall()}


def ensure_history_partitions(*, days_ahead: int = DAYS_AHEAD, using: str = "default") -> list[str]:
    """Create the partitions missing from today to days_ahead days later; returns their names.

    Does nothing when another session is at it. A day that cannot be attached (its lock not had in
    time, or rows of that day already in the default partition) is logged and skipped: it is tried
    again next time, and its rows meanwhile go to the default partition.
    """
    created: list[str] = []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(QUERIES["lock_partitions"])
        if not cursor.fetchone()[0]:
            return created
        cursor.execute(QUERIES["database_now"])
        today = cursor.fetchone()[0].astimezone(dt.UTC).date()
        cursor.execute(QUERIES["history_partitions"])
        existing = {name for name, _ in cursor.fetchall()}
        for offset in range(days_ahead + 1):
            day = today + dt.timedelta(days=offset)
            name = partition_name(day)
            if name in existing:
                continue
            try:
                with transaction.atomic(using=using):
                    cursor.execute(
                        _ddl(name, QUERIES["create_history_partition"]),
                        {"start": _midnight(day), "end": _midnight(day + dt.timedelta(days=1))},
                    )
            except DatabaseError as exc:
                logger.warning("history_partition_not_created partition=%s error=%s", name, exc)
            else:
                created.append(name)
    if created:
        logger.info("history_partitions_created partitions=%s", ",".join(created))
    return created


@dataclass(frozen=True, slots=True)
class Dropped:
    partitions: list[str]
    estimated_rows: int


def drop_history_partitions(*, older_than: float, using: str = "default") -> Dropped:
    """Drop the partitions whose whole day finished more than older_than seconds ago."""
    dropped: list[str] = []
    rows = 0
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(QUERIES["lock_partitions"])
        if not cursor.fetchone()[0]:
            return Dropped(dropped, rows)
        cursor.execute(QUERIES["database_now"])
        cutoff = cursor.fetchone()[0] - dt.timedelta(seconds=older_than)
        cursor.execute(QUERIES["history_partitions"])
        for name, estimate in cursor.fetchall():
            day = partition_day(name)
            if day is None or _midnight(day + dt.timedelta(days=1)) > cutoff:
                continue
            try:
                with transaction.atomic(using=using):
                    cursor.execute(_ddl(name, QUERIES["drop_history_partition"]))
            except DatabaseError as exc:
                logger.warning("history_partition_not_dropped partition=%s error=%s", name, exc)
            else:
                dropped.append(name)
                rows += estimate
    return Dropped(dropped, rows)


def purge_finished(*, older_than: float, statuses: Sequence[str], batch: int, using: str = "default") -> int:
    """Delete one batch of finished tasks older than older_than seconds; returns how many."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["purge_finished"], {"older_than": older_than, "statuses": list(statuses), "batch": batch}
        )
        return int(cursor.rowcount)


def count_purgeable(*, older_than: float, statuses: Sequence[str], using: str = "default") -> int:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["count_purgeable"], {"older_than": older_than, "statuses": list(statuses)})
        return int(cursor.fetchone()[0])
