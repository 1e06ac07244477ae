"""Connection care for long-running worker threads (Django's request cycle does this for views)."""

from __future__ import annotations

import logging

import psycopg
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from queueapp import database_urls

logger = logging.getLogger(__name__)

# Errors after which a thread's connection may be broken (server restart, network cut). Not every
# DatabaseError: a constraint or data error would fail the same way again, so it is not retried.
CONNECTION_ERRORS = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


def reset_connection() -> None:
    """Drop this thread's Django connection so the next query opens a fresh one."""
    try:
        connection.close()
    except CONNECTION_ERRORS:
        logger.debug("closing a broken connection failed", exc_info=True)


def ensure_usable_connection() -> None:
    """Before a unit of work: replace this thread's connection if an error may have broken it."""
    if connection.connection is not None and connection.errors_occurred:
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            reset_connection()


def listen_conninfo() -> str:
    """Where the listener connects: TASKQUEUE LISTEN_DATABASE_URL (direct, not PgBouncer) or the
    default database, with all its hosts and libpq options (target_session_attrs for failover)."""
    url = settings.TASKQUEUE.get("LISTEN_DATABASE_URL")
    database = database_urls.parse(str(url)) if url else settings.DATABASES["default"]
    return database_urls.conninfo(database, application_name="taskqueue-listener")
