"""Demo tasks for a first look: `make demo` enqueues them, the worker in `make run` runs them.
Between them they show every state: quick successes, a slow task (RUNNING long enough to watch,
cancel or kill its worker), retries that end in success, and a task that fails for good."""

from __future__ import annotations

import random
import time
from typing import Any

from django.conf import settings
from django.tasks import TaskContext, task

from queueapp import http_tasks


@task
def add(a: int, b: int) -> int:
    """Return a + b."""
    return a + b


@task(priority=10)
def send_welcome_email(user_id: int) -> str:
    """Pretend to send an email: sleeps a little, like a real SMTP call."""
    time.sleep(0.2)
    return f"welcome email sent to user {user_id}"


@task(max_attempts=3)  # type: ignore[call-overload,untyped-decorator]  # our backend's extra
def flaky_report(report_id: int) -> dict[str, int]:
    """Fail about half the time, to show retries with backoff in the admin."""
    if random.random() < 0.5:
        raise RuntimeError(f"report {report_id}: upstream timed out")
    return {"report_id": report_id, "rows": random.randint(1, 1000)}


@task
def slow(seconds: float = 10.0) -> str:
    """Sleep, so that it stays RUNNING long enough to watch, cancel, or kill its worker under."""
    time.sleep(seconds)
    return f"slept {seconds} s"


@task(max_attempts=3)  # type: ignore[call-overload,untyped-decorator]  # our backend's extra
def always_fails(reason: str = "the demo's broken dependency") -> None:
    """Fail every attempt: FAILED after three, with a traceback per attempt."""
    raise ConnectionError(f"cannot reach {reason}")


@task(takes_context=True, max_attempts=4)  # type: ignore[call-overload,untyped-decorator]
def retry_then_succeed(context: TaskContext[Any, Any], failures: int = 2) -> str:
    """Fail the first `failures` attempts, then succeed: retries with backoff that end well."""
    if context.attempt <= failures:
        raise TimeoutError(f"attempt {context.attempt}: upstream still warming up")
    return f"succeeded on attempt {context.attempt}"


# The demo tasks can be submitted over HTTP too (docs/api.md).
http_tasks.expose("demo-add")(add)
http_tasks.expose("demo-welcome-email")(send_welcome_email)
if settings.DEBUG:
    # For the kill/scale/priority experiments with curl (make run); never in production.
    http_tasks.expose("demo-slow")(slow)
    http_tasks.expose("demo-always-fails")(always_fails)
    http_tasks.expose("demo-retry-then-succeed")(retry_then_succeed)
