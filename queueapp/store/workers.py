"""Workers: registration, heartbeats, states, and the guarded reaping of lost ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import UUID

from django.db import connections

from queueapp.sql import QUERIES


def register_worker(
    *,
    worker_id: UUID,
    hostname: str,
    pid: int,
    queues: Sequence[str],
    concurrency: int,
    wake_channel: str | None = None,
    using: str = "default",
) -> None:
    """wake_channel: where wake-ups naming it go (store.wake_channel of its listener), if it listens."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["register_worker"],
            {
                "id": worker_id,
                "hostname": hostname,
                "pid": pid,
                "queues": list(queues),
                "concurrency": concurrency,
                "wake_channel": wake_channel,
            },
        )


def beat_worker(worker_id: UUID, *, using: str = "default") -> bool:
    """Record a heartbeat; False when the worker was marked LOST and must exit."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["beat_worker"], {"id": worker_id})
        return cursor.fetchone() is not None


def set_worker_state(worker_id: UUID, state: str, *, using: str = "default") -> bool:
    """Move a worker to STOPPING or STOPPED; False when it was already LOST."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["set_worker_state"], {"id": worker_id, "state": state})
        return cursor.fetchone() is not None


@dataclass(frozen=True, slots=True)
class ReapOutcome:
    """What one reaper run did (or, for a preview, would do)."""

    ran: bool
    """False when another reaper held the cluster-wide lock, so this one did nothing."""
    workers_lost: int
    tasks_requeued: int
    tasks_failed: int


def reap_workers(
    *,
    stale_after: float,
    backoff_base: float,
    backoff_max: float,
    worker_ids: Sequence[UUID] = (),
    using: str = "default",
) -> ReapOutcome:
    """Mark stale (or the named) workers LOST and take back their RUNNING tasks."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["reap_workers"],
            {
                "stale_after": stale_after,
                "worker_ids": list(worker_ids),
                "backoff_base": backoff_base,
                "backoff_max": backoff_max,
            },
        )
        locked, lost, requeued, failed = cursor.fetchone()
    return ReapOutcome(bool(locked), lost, requeued, failed)


def preview_reap(*, stale_after: float, using: str = "default") -> ReapOutcome:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["preview_reap"], {"stale_after": stale_after})
        lost, requeued, failed = cursor.fetchone()
    return ReapOutcome(True, lost, requeued, failed)


class TimedTask(NamedTuple):
    """A RUNNING task with a timeout."""

    task_id: int
    worker_id: UUID
    attempt: int
    timeout: float
    late: bool
    """Running past its timeout."""


def timed_tasks(worker_ids: Sequence[UUID], *, using: str = "default") -> list[TimedTask]:
    """The RUNNING tasks of these workers that have a timeout."""
    if not worker_ids:
        return []
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["timed_tasks"], {"worker_ids": list(worker_ids)})
        return [TimedTask(*row) for row in cursor.fetchall()]


def purge_workers(*, older_than: float, using: str = "default") -> int:
    """Delete worker rows stopped or lost more than older_than seconds ago, keeping any that RUNNING
    tasks still name; returns how many went."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["purge_workers"], {"older_than": older_than})
        return int(cursor.rowcount)


HOUSEKEEPING = "housekeeping"
"""The role of queueapp_housekeeper's one row: the fleet's stager and scheduler (workers.housekeeper)."""


class HousekeepingTry(NamedTuple):
    taken: bool | None
    """True when newly taken, False when renewed, None when another process holds the row."""
    ready: int
    """READY tasks of the queues asked about, counted up to cap (0 when none were asked about)."""


def take_housekeeping(
    *,
    holder: UUID,
    hostname: str,
    pid: int,
    ttl: float,
    count_ready: Sequence[str] = (),
    cap: int = 0,
    using: str = "default",
) -> HousekeepingTry:
    """Take or renew the housekeeping row for ttl seconds; with count_ready, also count the READY
    tasks of those queues up to cap, in the same statement (a supervisor's poll for its children)."""
    params: dict[str, Any] = {
        "role": HOUSEKEEPING,
        "holder": holder,
        "hostname": hostname,
        "pid": pid,
        "ttl": ttl,
        "queues": list(count_ready),
        "cap": cap if count_ready else 0,
    }
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["take_housekeeping"], params)
        taken, ready = cursor.fetchone()
    return HousekeepingTry(taken, int(ready))


def give_up_housekeeping(*, holder: UUID, using: str = "default") -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["give_up_housekeeping"], {"role": HOUSEKEEPING, "holder": holder})
