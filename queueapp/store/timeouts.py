"""Statement and lock timeouts for a worker's own connections: for the session, or per transaction.

Set for the session (a startup `options`, a SET when the connection opens) they would not survive a
pooler in transaction mode: PgBouncer refuses `options`, and a session SET stays on the server
session for whichever client the pooler gives it next. Behind a pooler they are set LOCAL, first in
each transaction, and hold for that transaction's statements and end with it. A connection that goes
straight to PostgreSQL has its server session to itself, for as long as it is open: there they are
set once, when it opens (set_session), and each statement is one round trip instead of four (BEGIN,
the limits, the statement, COMMIT).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg.sql
from django.db import transaction

from queueapp.sql import QUERIES


class _Executes(Protocol):
    def execute(self, query: Any, /) -> Any: ...


@dataclass(frozen=True)
class StatementLimits:
    """How long a statement may run (statement_timeout) and wait for a lock (lock_timeout)."""

    statement_timeout_ms: int
    lock_timeout_ms: int

    @functools.cached_property
    def limit_transaction(self) -> str:
        return written_in(QUERIES["limit_transaction"], self)

    @functools.cached_property
    def limit_session(self) -> str:
        return written_in(QUERIES["limit_session"], self)

    @functools.cached_property
    def claim_plan(self) -> str:
        return written_in(QUERIES["claim_plan"], self)

    @functools.cached_property
    def claim_only_plan(self) -> str:
        """claim_plan for a round that records no success: its commit does not wait for a flush."""
        return written_in(QUERIES["claim_plan"], self, durable=False)

    def set_local(self, target: _Executes) -> None:
        """Limit the rest of the transaction target (a psycopg connection or cursor) is in."""
        target.execute(self.limit_transaction)

    def set_session(self, target: _Executes) -> None:
        """Limit every later statement of target's session: only on a connection of its own, never
        through a pooler (see the module's docstring)."""
        target.execute(self.limit_session)

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


def written_in(query: str, limits: StatementLimits | None, *, durable: bool = True) -> str:
    """query with the limits written in (None: NULL, which claim_plan reads as "as it is"), and
    (claim_plan) whether its commit waits for a flush as the settings say or not at all.
    Composed once, without its comment lines, and sent without parameters: adapting parameters and
    handling the comment's text, round after round, each cost a round about 2 per cent."""
    values = (limits.statement_timeout_ms, limits.lock_timeout_ms) if limits else (None, None)
    statement, lock = (psycopg.sql.Literal(None if value is None else str(value)) for value in values)
    commit = (
        psycopg.sql.SQL("current_setting('synchronous_commit')") if durable else psycopg.sql.Literal("off")
    )
    text = "\n".join(line for line in query.splitlines() if not line.startswith("--"))
    composed = psycopg.sql.SQL(text).format(
        statement_timeout=statement, lock_timeout=lock, synchronous_commit=commit
    )
    return composed.as_string()


UNLIMITED_CLAIM_PLAN = written_in(QUERIES["claim_plan"], None)
"""claim_plan for a session held to no limits of its own: the plan setting alone."""
UNLIMITED_CLAIM_ONLY_PLAN = written_in(QUERIES["claim_plan"], None, durable=False)
