"""Tasks used by the tests (imported through TASKQUEUE['IMPORTS'] in tests/settings.py)."""

from __future__ import annotations

from typing import Any

from django.tasks import TaskContext, task


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
