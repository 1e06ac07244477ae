"""Flow control: pausing queues, and what the console and the API say about queues and waiting tasks.

The limits themselves are enforced by the claim (claim_flow_tasks, run by store.WorkerSession).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from django.core.exceptions import ValidationError
from django.db import connections, transaction

from queueapp import models
from queueapp.sql import QUERIES
from queueapp.states import BreakerState, TaskStatus

SETTINGS_CHANNEL = "taskqueue_settings"
"""Notified with a queue's name when its settings change: workers re-read which queues they must
claim through the flow-controlled claim."""


@dataclass(frozen=True, slots=True)
class FlowView:
    """What a worker knows of flow control: which of its queues are flow-controlled, as of epoch
    (the flow epochs of its other queues then: its plain claim holds only while they have it)."""

    epoch: int = 0
    queues: frozenset[str] = frozenset()
    keyed: frozenset[str] = frozenset()
    """Those of queues that have had tasks with a concurrency key."""
    breakers: frozenset[str] = frozenset()
    """Those of queues with a circuit breaker: their successes are counted for it."""


def flow_view(conn: psycopg.Connection[Any], queues: Collection[str]) -> FlowView:
    """A worker's FlowView, read in one snapshot on its own connection."""
    row = conn.execute(QUERIES["flow_view"], {"queues": sorted(queues)}).fetchone()
    assert row is not None  # one row, always
    return FlowView(row[0], frozenset(row[1]), frozenset(row[2]), frozenset(row[3]))


def set_paused(queue: str, paused: bool, *, using: str = "default") -> None:
    """Pause (or resume) a queue, fleet-wide, from the moment the caller's transaction commits."""
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(QUERIES["set_paused"], {"queue": queue, "paused": paused})
        flow_changed(cursor, [queue])


def notify_settings(queue: str, *, using: str = "default") -> None:
    """After an edit of a queue's settings through the ORM, in its transaction: see flow_changed."""
    with connections[using].cursor() as cursor:
        flow_changed(cursor, [queue])


def flow_changed(cursor: Any, queues: Sequence[str]) -> None:
    """Queues' flow control changed in this transaction (their settings rows written): from its
    commit on, the plain claims of workers on these queues claim nothing until the worker looked
    again; workers are told."""
    cursor.execute(QUERIES["flow_changed"], {"queues": sorted(queues)})


@dataclass(frozen=True, slots=True)
class QueueFlow:
    """One queue on the Queues page, in GET /api/queues and in /metrics."""

    name: str
    paused: bool
    concurrency_limit: int | None
    key_concurrency: int
    rate_limit: int | None
    rate_period: float
    ready: int
    scheduled: int
    running: int
    started_last_minute: int
    oldest_ready_seconds: float | None
    breaker_threshold: float | None
    breaker_state: str
    """closed, open or half_open (closed when the queue has no breaker)."""
    key_rate_limit: int | None
    key_rate_period: float


def queue_flow(*, using: str = "default") -> list[QueueFlow]:
    """Every queue with live tasks or settings, by name."""
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(QUERIES["report_plan"])
        cursor.execute(QUERIES["queue_flow"])
        rows = [list(row) for row in cursor.fetchall()]
    for row in rows:  # the oldest wait comes as a Decimal (extract)
        row[10] = None if row[10] is None else float(row[10])
    return [QueueFlow(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Hold:
    """One thing that keeps a task from being claimed: a stable code and a sentence for people."""

    code: str
    message: str


def why_waiting(task_id: int, *, stale_after: float, using: str = "default") -> list[Hold] | None:
    """What holds a SCHEDULED or READY task now (empty: nothing, a worker should take it at once);
    None when the task is not waiting (running, finished, or unknown)."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["why_waiting"], {"id": task_id, "stale_after": stale_after})
        values = cursor.fetchone()
        names = [column.name for column in cursor.description or ()]
    if values is None or values[0] not in (TaskStatus.SCHEDULED, TaskStatus.READY):
        return None
    return [Hold(code, message) for code, message in _holds(dict(zip(names, values, strict=True)))]


def _holds(w: dict[str, Any]) -> Iterator[tuple[str, str]]:
    queue = repr(w["queue"])
    if w["not_due"]:
        yield "run_after", "its run_after is in the future (deferred, or waiting for a retry)"
    if w["paused"]:
        yield "queue_paused", f"queue {queue} is paused"
    if w["breaker"] in (BreakerState.OPEN, BreakerState.HALF_OPEN):
        yield "breaker_open", f"queue {queue} has its circuit breaker {w['breaker'].replace('_', '-')}"
    if w["queue_limit"] is not None and w["queue_running"] >= w["queue_limit"]:
        running = f"{w['queue_running']} of {w['queue_limit']} running"
        yield "queue_concurrency", f"queue {queue} is at its concurrency limit ({running})"
    if w["key"] is not None and w["key_running"] >= w["key_limit"]:
        running = f"{w['key_running']} of {w['key_limit']} running"
        yield "key_concurrency", f"concurrency key {w['key']!r} is at its limit ({running})"
    if w["key_rate_limit"] is not None and w["key_tokens"] is not None and w["key_tokens"] < 1:
        rate = f"{w['key_rate_limit']} per {w['key_rate_period']:g} s"
        yield "key_rate_limit", f"concurrency key {w['key']!r} is at its rate limit ({rate} per key)"
    if w["tokens"] is not None and w["tokens"] < 1:
        rate = f"{w['rate_limit']} per {w['rate_period']:g} s"
        yield "rate_limit", f"queue {queue} is at its rate limit ({rate})"
    if w["ahead"]:
        yield "tasks_ahead", f"{w['ahead']} READY task(s) of queue {queue} come before it"
    if not w["listeners"]:
        yield "no_worker", f"no live worker listens on queue {queue}"


SEEDABLE = (
    "paused",
    "concurrency_limit",
    "key_concurrency",
    "rate_limit",
    "rate_period",
    "key_rate_limit",
    "key_rate_period",
)
"""The settings TASKQUEUE["FLOW_CONTROL"] may give a queue."""


def seed_queue_settings(seeds: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Create the settings rows that seeds give and the database lacks (an operator's edits win);
    all or none, each checked as the admin checks it. Returns the queues created."""
    made = []
    with transaction.atomic():
        for name, values in seeds.items():
            unknown = set(values) - set(SEEDABLE)
            if unknown:
                known = ", ".join(SEEDABLE)
                raise ValidationError(f"queue {name!r}: unknown settings {sorted(unknown)} (known: {known})")
            if models.QueueControl.objects.filter(name=name).exists():
                continue
            row = models.QueueControl(name=name, **values)
            row.full_clean()
            row.save()
            notify_settings(name)
            made.append(name)
    return made
