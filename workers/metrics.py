"""Counters and histograms kept by worker processes, served by `runworker --metrics-port`.

Under `--processes`, children write to a shared PROMETHEUS_MULTIPROC_DIR and the supervisor serves
the sum over all of them on one port (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Histogram

from queueapp.states import Outcome

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

TASKS_FINISHED = Counter(
    "taskqueue_tasks_finished", "Attempts finished, by task and outcome", ["task", "outcome"]
)
TASK_DURATION = Histogram("taskqueue_task_duration_seconds", "Run time of an attempt", ["task"])
PICKUP_LATENCY = Histogram(
    "taskqueue_pickup_latency_seconds",
    "From due (run_after) to start, first attempts",
    buckets=LATENCY_BUCKETS,
)
RETRIES = Counter("taskqueue_task_retries", "Failed attempts that will be retried", ["task"])
REAPED = Counter("taskqueue_reaped_tasks", "Tasks taken back from lost workers", ["outcome"])
SCHEDULE_TICKS = Counter(
    "taskqueue_schedule_ticks",
    "Schedule ticks by outcome: enqueued by this worker, duplicate (another worker enqueued it), "
    "missed (late, left out by catch_up), failed (task unknown or refused)",
    ["schedule", "outcome"],
)


@functools.cache
def _children(task: str, outcome: str) -> tuple[Any, Any, Any]:
    # labels() takes a lock and builds a key on every call; a task's children never change.
    retries = RETRIES.labels(task) if outcome == Outcome.RETRY else None
    return TASKS_FINISHED.labels(task, outcome), TASK_DURATION.labels(task), retries


def finished(task: str, outcome: str, duration: float) -> None:
    """Count one finished attempt and its run time."""
    counter, histogram, retries = _children(task, outcome)
    counter.inc()
    histogram.observe(duration)
    if retries is not None:
        retries.inc()
