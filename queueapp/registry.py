"""Tasks known to this process, by dotted path.

A row's task_path is resolved only through this registry, never by importing the path: a Task
registers itself when its module is imported (PostgresBackend.validate_task), and start-up imports
every installed app's ``tasks`` module plus the modules listed in TASKQUEUE["IMPORTS"].
"""

from __future__ import annotations

import logging
import threading
from importlib import import_module
from importlib.util import find_spec
from typing import Any

from django.apps import apps
from django.tasks import Task

from queueapp import conf, exceptions

logger = logging.getLogger(__name__)

_tasks: dict[str, Task[Any, Any]] = {}
_lock = threading.Lock()


def register(task: Task[Any, Any]) -> None:
    """Remember the first Task seen for its path (``.using()`` copies share the path)."""
    path = task.module_path
    if path not in _tasks:
        with _lock:
            _tasks.setdefault(path, task)


def get(task_path: str) -> Task[Any, Any]:
    """The Task registered under task_path, or UnknownTaskPath."""
    try:
        return _tasks[task_path]
    except KeyError:
        raise exceptions.UnknownTaskPath(
            f"task {task_path!r} is not registered in this process: define it in an app's "
            "tasks.py or list its module in TASKQUEUE['IMPORTS']"
        ) from None


def paths() -> list[str]:
    """Every registered task path, sorted."""
    return sorted(_tasks)


def autodiscover() -> None:
    """Import every app's ``tasks`` module and the configured task modules."""
    for app_config in apps.get_app_configs():
        name = f"{app_config.name}.tasks"
        if find_spec(name) is not None:
            import_module(name)
    for name in conf.get().imports:
        import_module(name)
