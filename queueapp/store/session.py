"""The worker's hot path: claim and finish on a psycopg connection of the worker's own.

A round is one round trip and one transaction: the fenced finish of every task that succeeded
since the last round and the claim for the slots that frees are pipelined together, so a round
costs one commit however many tasks it carries. The statements are prepared on the server the
first time they run (unless TASKQUEUE["PREPARED_STATEMENTS"] or a pooler in front of the database
says otherwise: store.poolers), and the connection skips Django's cursor wrappers: nothing here is
per task but the values themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from django.db import connections
from psycopg.types.string import TextLoader

from queueapp.sql import QUERIES
from queueapp.states import TaskStatus
from queueapp.store.limits import FlowView, flow_view
from queueapp.store.poolers import explain_lost_statements, prepared_statements
from queueapp.store.rows import TaskRow, decode_json
from queueapp.store.timeouts import UNLIMITED_CLAIM_ONLY_PLAN, UNLIMITED_CLAIM_PLAN, StatementLimits


@dataclass(frozen=True, slots=True)
class FlowQueue:
    """A flow-controlled queue of the worker's, as its claim locked it."""

    name: str
    paused: bool
    rate_per_second: float | None
    breaker: bool = False


@dataclass(frozen=True, slots=True)
class BreakerChange:
    """A queue's circuit breaker that changed state, and the window's figures that made it."""

    queue: str
    state: str
    failures: int
    attempts: int


class Success(NamedTuple):
    """A task that returned: its fenced attempt and its return value as JSON text (one a task: a
    tuple is made faster than a frozen dataclass)."""

    task_id: int
    attempt: int
    return_value_json: str


def attempt_params(worker_id: UUID, successes: Sequence[Success]) -> dict[str, Any]:
    """Which tasks and attempts, for the fenced statements about successes."""
    return {
        "worker_id": worker_id,
        "ids": int_array(success.task_id for success in successes),
        "attempts": int_array(success.attempt for success in successes),
    }


def finish_params(worker_id: UUID, successes: Sequence[Success]) -> dict[str, Any]:
    """attempt_params, and the return values as one JSON array (finish_tasks takes each by position)."""
    return {
        **attempt_params(worker_id, successes),
        "return_values": "[" + ",".join(success.return_value_json for success in successes) + "]",
    }


def int_array(values: Iterable[int]) -> str:
    """Integers as an array's text ({1,2,3}) for a ::bigint[] or ::int[] parameter. psycopg dumps a
    list element by element in Python: a round's ids and attempts took 2 us a task that way, more
    than everything else the round sends."""
    return "{" + ",".join(map(str, values)) + "}"


def claim_params(worker_id: UUID, queues: Sequence[str], limit: int, flow_epoch: int = 0) -> dict[str, Any]:
    return {"worker_id": worker_id, "queues": list(queues), "limit": limit, "flow_epoch": flow_epoch}


def claimed_rows(worker_id: UUID, values: Sequence[Sequence[Any]]) -> list[TaskRow]:
    """The claim's rows (RUNNING under worker_id), in claim order: UPDATE ... RETURNING gives none."""
    rows = [
        TaskRow(
            id=task_id,
            task_path=task_path,
            queue_name=queue_name,
            priority=priority,
            status=TaskStatus.RUNNING,
            args=_json(args),
            kwargs=_json(kwargs),
            run_after=run_after,
            enqueued_at=enqueued_at,
            started_at=started_at,
            finished_at=None,
            attempts=attempts,
            max_attempts=max_attempts,
            worker_id=worker_id,
            worker_ids=worker_ids,
            errors=_json(errors),
            return_value=None,
            cancel_requested=cancel_requested,
            timeout=timeout,
        )
        for (
            task_id,
            task_path,
            queue_name,
            priority,
            args,
            kwargs,
            run_after,
            enqueued_at,
            started_at,
            attempts,
            max_attempts,
            worker_ids,
            errors,
            cancel_requested,
            timeout,
        ) in values
    ]
    rows.sort(key=lambda row: (-row.priority, row.run_after, row.id))
    return rows


def _json(text: Any) -> Any:
    """A jsonb column as Python: both the worker's connection and Django's load jsonb as text, in C
    (psycopg's own loader hands bytes to json.loads, which sniffs their encoding in Python; a loader
    in Python is called from C once a value, three a claimed task: each cost more than the decoding).
    A connection with psycopg's own jsonb loader gives Python values already: they pass as they are."""
    return decode_json(text) if isinstance(text, str) else text


NO_FLOW = FlowView()
"""The view of a worker that has not looked (or has no flow-controlled queue, as of epoch 0)."""


@contextlib.contextmanager
def one_transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """The block's statements in one transaction, pipelined with its BEGIN and COMMIT: one round trip
    unless the block fetches a result before its end. (psycopg's transaction() inside a pipeline opens
    a pipeline of its own around the block and syncs at the end of each: three round trips; an empty
    claim round took 0.56 ms against 0.29 now, docs/benchmarks.md.) Whatever fails, the transaction
    is rolled back before the error goes on."""
    try:
        with conn.pipeline():
            conn.execute("BEGIN", prepare=False)
            yield
            conn.execute("COMMIT", prepare=False)
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):  # a broken connection: the caller drops it
                conn.rollback()
        raise


class WorkerSession:
    """One worker process's claim-and-finish connection (used by one thread at a time)."""

    def __init__(
        self,
        *,
        worker_id: UUID,
        queues: Sequence[str],
        prepare: bool = True,
        limits: StatementLimits | None = None,
        using: str = "default",
    ):
        self.worker_id = worker_id
        self.queues = list(queues)
        self.prepare = prepare
        """False: never prepare; True: prepare where store.poolers allows it."""
        self.limits = limits
        """Set first in each transaction (the worker's statement and lock timeouts); None: none."""
        self.using = using
        self.conn: psycopg.Connection[Any] | None = None
        self.flow_queues: list[FlowQueue] = []
        """The worker's flow-controlled queues as the latest flow-controlled claim found them."""
        self.breaker_changes: list[BreakerChange] = []
        """Circuit breakers that the latest flow-controlled claim moved (to be logged)."""

    def connect(self) -> psycopg.Connection[Any]:
        # Django's connection parameters, but psycopg's own type adapters (C loaders for times,
        # where Django's are Python: a tenth of a round's time went there) and a plain
        # server-binding cursor so that statements can be prepared. Times come back in UTC.
        params = connections[self.using].get_connection_params()
        params.pop("context", None)
        params.update(
            cursor_factory=psycopg.Cursor,
            prepare_threshold=0 if self.prepare and prepared_statements(self.using) else None,
            autocommit=True,
            connect_timeout=params.get("connect_timeout", 10),
        )
        params.setdefault("application_name", "taskqueue-worker")
        conn = psycopg.connect(**params)
        conn.adapters.register_loader("jsonb", TextLoader)  # decoded by _json
        conn.execute("SET TIME ZONE 'UTC'", prepare=False)
        return conn

    def round(
        self,
        successes: Sequence[Success],
        limit: int,
        *,
        view: FlowView = NO_FLOW,
        refresh: bool = True,
    ) -> tuple[dict[int, str], list[TaskRow]]:
        """Record successes and claim up to limit tasks in one transaction.

        Returns the recorded status by task id (SUCCESSFUL, or CANCELLED when a cancel was
        requested; a task taken away meanwhile is missing) and the claimed rows in claim order.
        view: the worker's flow view (flow_view()). Its flow-controlled queues are claimed first (and
        self.flow_queues refreshed), then the plain claim fills the slots left from the other
        queues, in a second round trip of the same transaction. Without any, a round is the plain
        claim alone; refresh: the settings may have changed since the last round (breakers are
        looked at).
        """
        if self.conn is None:
            self.conn = self.connect()
        conn = self.conn
        plain = [queue for queue in self.queues if queue not in view.queues] if view.queues else self.queues
        finish = claim = None
        values: list[Any] = []
        with explain_lost_statements(), one_transaction(conn):
            if limit > 0:  # the claim's plan setting and the limits in one statement, before the finish
                # Only a plain claim and nothing else commits without waiting for a flush (claim_plan):
                # a flow-controlled claim also spends tokens and steps breakers, which a crash must
                # not give back while the tasks they let through run on.
                durable = bool(successes) or bool(view.queues)
                conn.execute(self.claim_plan(durable=durable))
            else:
                self.limit(conn)
            if successes:
                params = finish_params(self.worker_id, successes)
                finish = conn.execute(QUERIES["finish_tasks"], params)
                if view.breakers:
                    conn.execute(QUERIES["count_breaker_successes"], params)
            if limit > 0:
                if view.queues:
                    values = self._claim_flow(conn, view, limit, refresh=refresh)
                if plain and limit > len(values):
                    if view.queues:
                        conn.execute(QUERIES["plain_plan"], prepare=False)
                    params = claim_params(self.worker_id, plain, limit - len(values), view.epoch)
                    claim = conn.execute(QUERIES["claim_tasks"], params)
        if claim is not None:  # fetched after the commit: a plain round is one round trip
            values += claim.fetchall()
        statuses = {task_id: status for task_id, status in finish.fetchall()} if finish else {}
        return statuses, claimed_rows(self.worker_id, values)

    def claim_plan(self, *, durable: bool) -> str:
        if self.limits is None:
            return UNLIMITED_CLAIM_PLAN if durable else UNLIMITED_CLAIM_ONLY_PLAN
        return self.limits.claim_plan if durable else self.limits.claim_only_plan

    def flow_view(self) -> FlowView:
        """The worker's FlowView, on this connection (prepared like a round's statements)."""
        if self.conn is None:
            self.conn = self.connect()
        conn = self.conn
        with explain_lost_statements(), one_transaction(conn):
            self.limit(conn)
            return flow_view(conn, self.queues)

    def _claim_flow(
        self, conn: psycopg.Connection[Any], view: FlowView, limit: int, *, refresh: bool
    ) -> list[Any]:
        """The flow-controlled claim of round(): lock the queues' settings, step their breakers,
        claim (one queue without keys by the cheaper claim_flow_queue); its rows."""
        queues = sorted(view.queues)
        params = {**claim_params(self.worker_id, queues, limit), "queue": queues[0]}
        one_unkeyed = len(queues) == 1 and not view.keyed
        conn.execute(QUERIES["flow_plan"], prepare=False)
        locked = conn.execute(QUERIES["lock_flow_queues"], params)
        # Breakers move only where the last look found one (or on a fresh look).
        stepped = None
        if refresh or any(queue.breaker for queue in self.flow_queues):
            stepped = conn.execute(QUERIES["step_breakers"], params)
        claim = conn.execute(
            QUERIES["claim_flow_queue"] if one_unkeyed else QUERIES["claim_flow_tasks"], params
        )
        self.flow_queues = [FlowQueue(*row) for row in locked.fetchall()]
        self.breaker_changes = [BreakerChange(*row) for row in stepped.fetchall()] if stepped else []
        return claim.fetchall()

    def set_waiting(self, waiting: bool) -> bool:
        """Mark this worker waiting for work (enqueues on its queues notify it) or not. Marking
        gives up, False, while an enqueue on one of its queues is under way: claim again first."""
        if self.conn is None:
            self.conn = self.connect()
        conn = self.conn
        with one_transaction(conn):
            self.limit(conn)
            if not waiting:
                conn.execute(QUERIES["clear_worker_waiting"], {"worker_id": self.worker_id})
                return True
            marked = conn.execute(
                QUERIES["mark_worker_waiting"], {"worker_id": self.worker_id, "queues": self.queues}
            )
        return marked.fetchone() is not None

    def reconcile(
        self, held: Sequence[int], successes: Sequence[Success]
    ) -> tuple[list[int], dict[int, str]]:
        """After a round whose outcome is unknown: release the claims this worker does not hold (ids
        returned) and say which successes that round recorded after all (status by task id)."""
        if self.conn is None:
            self.conn = self.connect()
        conn = self.conn
        recorded = None
        with one_transaction(conn):
            self.limit(conn)
            released = conn.execute(
                QUERIES["release_unknown_claims"], {"worker_id": self.worker_id, "held": list(held)}
            )
            if successes:
                params = attempt_params(self.worker_id, successes)
                recorded = conn.execute(QUERIES["recorded_successes"], params)
        statuses = {task_id: status for task_id, status in recorded.fetchall()} if recorded else {}
        return [task_id for (task_id,) in released.fetchall()], statuses

    def limit(self, conn: psycopg.Connection[Any]) -> None:
        # Pipelined with the rest: no round trip of its own.
        if self.limits is not None:
            self.limits.set_local(conn)

    def close(self) -> None:
        """Drop the connection (after an error that may have broken it); the next round reconnects."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(psycopg.Error):
                conn.close()
