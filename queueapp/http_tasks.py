"""Tasks that may be submitted over HTTP, by name.

    @http_tasks.expose("send-welcome")
    @task
    def send_welcome(user_id: int) -> None: ...

Only names registered here can be submitted through the API; a request names a task, and the name is
looked up in this dict. Nothing named by a request is ever imported.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.tasks import Task

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")

T = TypeVar("T", bound=Task[Any, Any])

_by_name: dict[str, Task[Any, Any]] = {}
_name_by_path: dict[str, str] = {}


def expose(name: str) -> Callable[[T], T]:
    """Register a django.tasks Task for HTTP submission under name."""
    if not NAME.match(name):
        raise ImproperlyConfigured(f"HTTP task name {name!r} must match {NAME.pattern}")

    def register(task: T) -> T:
        if not isinstance(task, Task):
            raise ImproperlyConfigured(f"@expose({name!r}) must be applied on top of @task")
        existing = _by_name.get(name)
        if existing is not None and existing.module_path != task.module_path:
            raise ImproperlyConfigured(f"HTTP task name {name!r} is already used by {existing.module_path}")
        _by_name[name] = task
        _name_by_path[task.module_path] = name
        return task

    return register


def get(name: str) -> Task[Any, Any] | None:
    return _by_name.get(name)


def name_for(task_path: str) -> str | None:
    """The HTTP name of a stored task path, if it has one."""
    return _name_by_path.get(task_path)


def names() -> list[str]:
    return sorted(_by_name)


def allowed(name: str, patterns: Sequence[str]) -> bool:
    """Whether a key with these task patterns may submit name (no patterns: every exposed task)."""
    return not patterns or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
