"""Statement and lock timeouts for a worker's own connections, set per transaction.

Set for the session (a startup `options`, a SET when the connection opens) they would not survive a
pooler in transaction mode: PgBouncer refuses `options`, and a session SET stays on the server
session for whichever client the pooler gives it next. Set LOCAL, first in each transaction, they
hold for that transaction's statements and end with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import transaction

from queueapp.sql import QUERIES


class _Executes(Protocol):
    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


@dataclass(frozen=True, slots=True)
class StatementLimits:
    """How long a statement may run (statement_timeout) and wait for a lock (lock_timeout)."""

    statement_timeout_ms: int
    lock_timeout_ms: int

    def set_local(self, target: _Executes) -> None:
        """Limit the rest of the transaction target (a psycopg connection or cursor) is in."""
        target.execute(
            QUERIES["limit_transaction"],
            {"statement_timeout": str(self.statement_timeout_ms), "lock_timeout": str(self.lock_timeout_ms)},
        )

    def wrap_execute(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        """A Django execute wrapper: each statement runs in a transaction that starts limited. One in
        autocommit gets a transaction of its own (as autocommit gives it anyway); one in the caller's
        transaction is preceded by set_local (again: Django cannot say whether this one already was)."""
        connection = context["connection"]
        if connection.in_atomic_block:
            self._set_local(connection, context["cursor"])
            return execute(sql, params, many, context)
        with transaction.atomic(using=connection.alias):
            self._set_local(connection, context["cursor"])
            return execute(sql, params, many, context)

    def _set_local(self, connection: Any, cursor: Any) -> None:
        # On the cursor Django wraps, past the wrappers (this one would call itself), with Django's
        # error classes, so that the connection-error policy sees what it would see otherwise.
        with connection.wrap_database_errors:
            self.set_local(cursor.cursor)
