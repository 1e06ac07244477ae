"""Tasks for benchmarks (workers import them through TASKQUEUE_IMPORTS)."""

from __future__ import annotations

from django.tasks import task

from queueapp import http_tasks


@task
def noop() -> None:
    """Does nothing: what is measured is the queue's own cost per task."""


http_tasks.expose("bench-noop")(noop)
