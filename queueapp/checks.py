"""System checks: the queue needs PostgreSQL and sane limits."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from queueapp import conf, models, schedules, store

TAG = "taskqueue"
WORKER_TAGS = [checks.Tags.models, checks.Tags.compatibility, TAG]
"""The checks `runworker` runs before it starts: the queue's and the models'. The web's (URLs,
templates, the admin) would import the API and every view, which a worker never serves."""


@checks.register(TAG)
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


@checks.register(TAG)
def check_args_limit(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    limit = conf.get().max_args_bytes
    if not 0 < limit <= models.ARGS_HARD_LIMIT_BYTES:
        return [
            checks.Error(
                f"TASKQUEUE['MAX_ARGS_BYTES'] is {limit}; it must be between 1 and "
                f"{models.ARGS_HARD_LIMIT_BYTES} (the database's cap).",
                id="queueapp.E002",
            )
        ]
    return []


@checks.register(TAG)
def check_schedules(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Schedules declared in code: a bad cron expression, zone or task stops start-up with its
    reason instead of a schedule that silently never runs."""
    try:
        specs = schedules.declared()
    except ValueError as exc:
        return [checks.Error(str(exc), id="queueapp.E003")]
    return [
        checks.Error(error, id="queueapp.E004") for spec in specs for error in schedules.spec_errors(spec)
    ]


@checks.register(TAG)
def check_settings_are_known(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A TASKQUEUE key nothing reads is most likely a typo, which would otherwise go unnoticed."""
    return [
        checks.Warning(
            f"TASKQUEUE[{key!r}] is not a taskqueue setting; it is ignored.",
            hint="The settings are the fields of queueapp.conf.QueueSettings, in upper case.",
            id="queueapp.W001",
        )
        for key in conf.unknown_keys()
    ]


@checks.register(TAG)
def check_return_value_limit(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    limit = conf.get().max_return_bytes
    if limit <= 0:
        return [
            checks.Error(
                f"TASKQUEUE['MAX_RETURN_BYTES'] is {limit}; it must be positive.", id="queueapp.E005"
            )
        ]
    return []


@checks.register(TAG)
def check_prepared_statements(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        store.poolers.prepared_mode()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="queueapp.E006")]
    return []
