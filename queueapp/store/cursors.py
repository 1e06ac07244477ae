"""Cursors on Django's connections whose statements the server prepares once per connection.

Django binds parameters on the client and never prepares (poolers), so each enqueue would be
parsed and planned again. These cursors share Django's connection and so the caller's
transaction, and are wrapped by Django as usual (its error classes, execute_wrappers, query log).
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import connections
from django.db.backends.utils import CursorWrapper

from queueapp.store.poolers import explain_lost_statements, prepared_statements

_ONLY_WHEN_ASKED = 2**62


class _PreparingCursor(psycopg.Cursor[Any]):
    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("prepare", True)
        with explain_lost_statements():
            return super().execute(query, params, **kwargs)


def prepared_cursor(using: str) -> CursorWrapper:
    """A cursor for the queue's own statements: prepared unless TASKQUEUE["PREPARED_STATEMENTS"] or
    a pooler in front of the database says otherwise (store.poolers)."""
    db = connections[using]
    if not prepared_statements(using):
        return db.cursor()
    db.close_if_health_check_failed()
    db.ensure_connection()
    if db.connection.prepare_threshold is None:
        # Django turns psycopg's preparing off (None), which also ignores prepare=True. Django's
        # own client-binding cursors never prepare whatever the threshold: with one no query
        # reaches, only the statements asked for here are prepared.
        db.connection.prepare_threshold = _ONLY_WHEN_ASKED
    with db.wrap_database_errors:
        return db._prepare_cursor(_PreparingCursor(db.connection))  # type: ignore[attr-defined,no-any-return]
