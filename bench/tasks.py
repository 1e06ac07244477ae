"""Tasks for benchmarks (workers import them through TASKQUEUE_IMPORTS)."""

from __future__ import annotations

from django.tasks import task

from queueapp import http_tasks


@task
def noop(n: int = 0) -> None:
    """Does nothing: what is measured is the queue's own cost per task (n: the enqueue benchmarks
    pass a number, as the rows they compare with carry one)."""


http_tasks.expose("bench-noop")(noop)


@task
def sleep(seconds: float) -> None:
    """Waits like a task that calls a slow service: what is measured is how many can wait at once."""
    import time

    time.sleep(seconds)


@task
def clock() -> float:
    """Returns the moment it started (time.time()): bench.pickup_parts reads when the task function
    ran from its return value."""
    import time

    return time.time()


@task
def collect(wait: float) -> None:
    """Waits, then runs a full garbage collection (bench.memory: what it copies of the pages a child
    shares with its supervisor)."""
    import gc
    import time

    time.sleep(wait)
    gc.collect()
