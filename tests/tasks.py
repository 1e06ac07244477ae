"""Tasks used by the tests (imported through TASKQUEUE['IMPORTS'] in tests/settings.py)."""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from django.dispatch import receiver
from django.tasks import TaskContext, TaskResult, task
from django.tasks.signals import task_finished

from queueapp import http_tasks


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@task(queue_name="emails", priority=5)
def send_email(to: str) -> str:
    return f"sent to {to}"


@task(max_attempts=5)
def flaky(n: int) -> int:
    raise RuntimeError(f"flaky {n}")


@task(takes_context=True)
def with_context(context: TaskContext, value: int) -> dict[str, int]:
    return {"attempt": context.attempt, "value": value}


@task
async def async_add(a: int, b: int) -> int:
    return a + b


@task
def record(key: str) -> str:
    """Write a side effect whose unique key shows any second execution (tests create the table)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO test_side_effect (key) VALUES (%s)", [key])
    return key


@task
def sleep_then_return(seconds: float, value: str = "done") -> str:
    import time

    time.sleep(seconds)
    return value


@task(takes_context=True)
def slow_with_attempt(context: TaskContext, seconds: float) -> int:
    import time

    time.sleep(seconds)
    return context.attempt


@task(max_attempts=3)
def kill_own_process() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@task(takes_context=True)
def wait_for_cancel(context: TaskContext) -> str:
    import time

    from queueapp import cancellation

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cancellation.is_requested(context):
            return "stopped early"
        time.sleep(0.05)
    return "never cancelled"


@task
def record_then_wait_for_file(key: str, path: str) -> str:
    """record(key), so that a test knows the task has started, then return once the test has made
    the file at path (within a minute)."""
    import time

    record.call(key)
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return key


@task(takes_context=True)
def record_then_wait_for_cancel(context: TaskContext, key: str) -> str:
    """record(key), so that a test knows the task has started, then wait_for_cancel."""
    record.call(key)
    return wait_for_cancel.func(context)  # type: ignore[no-any-return]


@task
def returns_a_set() -> set[int]:
    return {1, 2}


@task(unique=True)
def refresh(account: int) -> int:
    """One live run per account (the key is made from the arguments)."""
    return account


@task(unique=lambda report, **_: f"report:{report}", unique_for=3600)
def build_report(report: str, *, requested_by: str = "") -> str:
    """One run per report an hour, whoever asks (the key is a function of the arguments)."""
    return report


# Exposed for HTTP submission under these names (queueapp.http_tasks).
http_tasks.expose("add")(add)
http_tasks.expose("echo")(echo)
http_tasks.expose("send-email")(send_email)
http_tasks.expose("record")(record)


@task
def raises_unstorable_text() -> None:
    raise ValueError("nul \x00 and a lone surrogate \ud800 in the message")


@task
def memory_a_full_collection_copies() -> int:
    """KiB of this process's memory that one full garbage collection made private: in a child
    forked from its supervisor, the pages it still shares are copied when the collector writes to
    the objects on them."""
    before = _private_dirty_kib()
    gc.collect()
    return _private_dirty_kib() - before


def _private_dirty_kib() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    raise AssertionError("no Private_Dirty in /proc/self/smaps_rollup")


@task(max_attempts=1)
def exits(code: int) -> None:
    """What argparse or click do with bad arguments, or a script's sys.exit()."""
    sys.exit(code)


@task
def has_a_failing_receiver() -> str:
    return "done"


@receiver(task_finished)
def _fail_for_one_task(sender: type, task_result: TaskResult[Any, Any], **kwargs: Any) -> None:
    """A user's task_finished receiver that raises (for has_a_failing_receiver only)."""
    if task_result.task.func is has_a_failing_receiver.func:
        raise RuntimeError("a task_finished receiver failed")
