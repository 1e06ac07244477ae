"""For long tasks: check whether someone asked to cancel the running task, and stop early.

    @task(takes_context=True)
    def import_rows(context, batch_id):
        for chunk in chunks(batch_id):
            if cancellation.is_requested(context):
                return "stopped early"
            ...

A cancelled task is recorded CANCELLED whatever it returns or raises afterwards. A worker that can
no longer reach the database (its lease ran out) asks all its running tasks to stop the same way.
"""

from __future__ import annotations

import threading
from typing import Any

from django.tasks import TaskContext

from queueapp import store
from queueapp.backend import parse_result_id

stop_all = threading.Event()
"""Set by a worker whose lease ran out (workers.lease): every task in this process is asked to stop,
without the database, which that worker can no longer reach."""


def is_requested(context: TaskContext[Any, Any]) -> bool:
    """True once cancel was requested for this task (one indexed read; call it between chunks)."""
    if stop_all.is_set():
        return True
    task_id = parse_result_id(context.task_result.id)
    return task_id is not None and store.is_cancel_requested(task_id)
