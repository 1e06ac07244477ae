"""settings.TASKQUEUE read through one typed object: `conf.get().stale_after`.

taskqueue_project/settings.py fills TASKQUEUE from the environment (docs/configuration.md); a key it
leaves out takes the default here. The object is built once and again whenever TASKQUEUE changes
(override_settings in tests).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver


@dataclass(frozen=True, kw_only=True)
class QueueSettings:
    imports: tuple[str, ...] = ()
    """Modules imported at start-up so that their tasks can be resolved by path."""
    max_args_bytes: int = 1_048_576
    """Largest JSON encoding of args plus kwargs accepted, in bytes."""
    max_return_bytes: int = 1_048_576
    """Largest JSON encoding of a task's return value stored; a larger one fails the attempt."""
    listen_database_url: str = ""
    """A direct (not PgBouncer) URL for LISTEN, read like DATABASE_URL; the default database when empty."""
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0
    """A worker whose heartbeat is older is LOST; one that cannot beat for this long exits (its lease)."""
    reap_interval: float | None = None
    """Seconds between a worker's reaper runs; half of stale_after when None."""
    stage_interval: float = 1.0
    schedule_interval: float = 1.0
    """Seconds between a worker's scheduler passes."""
    schedule_grace: float = 10.0
    """A tick enqueued later than this is missed, and its schedule's catch_up decides."""
    schedule: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Schedules declared in settings: {name: {"task": ..., "cron": ..., ...}} (docs/scheduling.md)."""
    api_max_body_bytes: int = 1_048_576
    max_ready_per_queue: int | None = None
    queue_limits: Mapping[str, int] = field(default_factory=dict)
    api_retry_after: int = 5
    flow_control: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Queue settings for `manage.py queues seed`: {queue: {"rate_limit": 10, ...}} (docs/flow-control.md)."""
    metrics_token: str = ""
    health_max_ready_age: float = 300.0
    """/api/health says degraded when a due READY task has waited longer (seconds)."""
    notify: bool = True
    """Enqueues NOTIFY the workers that wait on their queue; False: nothing notifies, workers poll."""
    prepared_statements: str | bool = "auto"
    """Enqueues and rounds as server-side prepared statements: "on", "off", or "auto" (unless a
    connection pooler is found in front of the database: store.poolers); True and False too."""


_FIELDS = {f.name.upper(): f.name for f in dataclasses.fields(QueueSettings)}


def unknown_keys() -> list[str]:
    """TASKQUEUE keys this version does not read (a typo?): the system checks warn about them."""
    return sorted(set(getattr(settings, "TASKQUEUE", {})) - set(_FIELDS))


@functools.cache
def get() -> QueueSettings:
    """The current TASKQUEUE settings, defaults filled in."""
    given: Mapping[str, Any] = getattr(settings, "TASKQUEUE", {})
    values = {_FIELDS[key]: value for key, value in given.items() if key in _FIELDS}
    if "imports" in values:
        values["imports"] = tuple(values["imports"])
    return QueueSettings(**values)


@receiver(setting_changed)
def _forget(*, setting: str, **kwargs: Any) -> None:
    if setting == "TASKQUEUE":
        get.cache_clear()
