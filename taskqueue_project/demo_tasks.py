"""Demo tasks for a first look: `make demo` enqueues them, the worker in `make run` runs them."""

from __future__ import annotations

import random
import time

from django.tasks import task

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


# The demo tasks can be submitted over HTTP too (docs/api.md).
http_tasks.expose("demo-add")(add)
http_tasks.expose("demo-welcome-email")(send_welcome_email)
