"""System checks: the queue needs PostgreSQL and sane limits."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from queueapp import models, store


@checks.register()
def check_database_is_postgresql(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The claim relies on SKIP LOCKED, LISTEN/NOTIFY and jsonb: PostgreSQL only."""
    vendor = connections["default"].vendor
    if vendor != "postgresql":
        return [
            checks.Error(
                f"taskqueue needs PostgreSQL, but the default database is {vendor!r}.",
                hint="Set DATABASE_URL to a postgres:// URL.",
                id="queueapp.E001",
            )
        ]
    return []


@checks.register()
def check_args_limit(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    limit = settings.TASKQUEUE.get("MAX_ARGS_BYTES", 0)
    if not 0 < limit <= models.ARGS_HARD_LIMIT_BYTES:
        return [
            checks.Error(
                f"TASKQUEUE['MAX_ARGS_BYTES'] is {limit}; it must be between 1 and "
                f"{models.ARGS_HARD_LIMIT_BYTES} (the database's cap).",
                id="queueapp.E002",
            )
        ]
    return []


@checks.register()
def check_return_value_limit(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    limit = settings.TASKQUEUE.get("MAX_RETURN_BYTES", 0)
    if limit <= 0:
        return [
            checks.Error(
                f"TASKQUEUE['MAX_RETURN_BYTES'] is {limit}; it must be positive.", id="queueapp.E003"
            )
        ]
    return []


@checks.register()
def check_prepared_statements(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        store.poolers.prepared_mode()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="queueapp.E004")]
    return []
