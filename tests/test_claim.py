"""The claim: SKIP LOCKED, at most N rows, priority order, the database's clock."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.db import connection, connections, transaction

from queueapp import models, store
from queueapp.sql import QUERIES
from tests import tasks
from tests.conftest import make_worker
from workers.stager import Stager

pytestmark = pytest.mark.django_db(transaction=True)


def claim_all(worker: models.Worker, limit: int) -> list[list[int]]:
    """Claim in batches of limit on this thread's own connection until nothing is left."""
    batches = []
    try:
        while rows := store.claim_tasks(worker_id=worker.id, queues=["default"], limit=limit):
            batches.append([row.id for row in rows])
    finally:
        connections.close_all()
    return batches


def test_concurrent_claimers_never_get_the_same_row() -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(600))
    workers = [make_worker() for _ in range(4)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        per_worker = list(pool.map(claim_all, workers, [7, 7, 7, 7]))

    claimed = [task_id for batches in per_worker for batch in batches for task_id in batch]
    assert all(len(batch) <= 7 for batches in per_worker for batch in batches)
    assert len(claimed) == len(set(claimed)) == 600
    assert sum(1 for batches in per_worker if batches) >= 2  # the claimers really overlapped
    for worker, batches in zip(workers, per_worker, strict=True):
        ids = [task_id for batch in batches for task_id in batch]
        assert models.Task.objects.filter(worker=worker, status="RUNNING", attempts=1).count() == len(ids)


def test_a_claim_skips_rows_locked_by_an_open_claim() -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(10))
    first, second = make_worker(), make_worker()
    held = threading.Event()
    release = threading.Event()
    first_ids: list[int] = []

    def hold_claim() -> None:
        try:
            with transaction.atomic():
                first_ids.extend(
                    row.id for row in store.claim_tasks(worker_id=first.id, queues=["default"], limit=4)
                )
                held.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_claim)
    holder.start()
    assert held.wait(10)
    # The first claim's transaction is still open: its rows are locked, not yet RUNNING to others.
    second_rows = store.claim_tasks(worker_id=second.id, queues=["default"], limit=10)
    release.set()
    holder.join(10)

    assert len(first_ids) == 4
    assert len(second_rows) == 6
    assert not set(first_ids) & {row.id for row in second_rows}


def test_claim_returns_at_most_limit_rows() -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(10))
    worker = make_worker()
    assert len(store.claim_tasks(worker_id=worker.id, queues=["default"], limit=3)) == 3
    assert len(store.claim_tasks(worker_id=worker.id, queues=["default"], limit=0)) == 0
    assert len(store.claim_tasks(worker_id=worker.id, queues=["default"], limit=100)) == 7


def test_claims_come_out_by_priority_then_run_after_then_id(raw_conn: psycopg.Connection) -> None:
    low = tasks.add.using(priority=-5).enqueue(0, 0)
    mid_late = tasks.add.enqueue(1, 1)
    mid_early = tasks.add.enqueue(2, 2)
    mid_early_twin = tasks.add.enqueue(3, 3)
    high = tasks.add.using(priority=50).enqueue(4, 4)
    # Same priority, earlier run_after first; equal run_after, lower id first.
    raw_conn.execute(
        "UPDATE queueapp_task_live SET run_after = now() - interval '10 minutes' WHERE id = ANY(%s)",
        [[int(mid_early.id), int(mid_early_twin.id)]],
    )
    raw_conn.execute(
        "UPDATE queueapp_task_live SET run_after = now() - interval '1 minute' WHERE id = %s",
        [int(mid_late.id)],
    )

    worker = make_worker()
    one_by_one = []
    while rows := store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1):
        one_by_one.append(str(rows[0].id))
    expected = [high.id, mid_early.id, mid_early_twin.id, mid_late.id, low.id]
    assert one_by_one == expected


def test_a_batch_claim_is_returned_in_claim_order() -> None:
    results = [tasks.add.using(priority=p).enqueue(p, p) for p in (1, 30, -2, 30, 7)]
    rows = store.claim_tasks(worker_id=make_worker().id, queues=["default"], limit=10)
    assert [row.priority for row in rows] == [30, 30, 7, 1, -2]
    assert [row.id for row in rows][:2] == [int(results[1].id), int(results[3].id)]


def test_only_the_asked_queues_are_claimed() -> None:
    tasks.send_email.enqueue("a@example.com")
    tasks.add.enqueue(1, 2)
    worker = make_worker(["emails"])
    rows = store.claim_tasks(worker_id=worker.id, queues=["emails"], limit=10)
    assert [row.task_path for row in rows] == ["tests.tasks.send_email"]


def test_deferred_task_is_not_claimed_before_its_run_after_on_the_database_clock(
    raw_conn: psycopg.Connection,
) -> None:
    db_now = raw_conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    result = tasks.add.using(run_after=db_now + dt.timedelta(seconds=30)).enqueue(1, 1)
    worker = make_worker()
    assert store.claim_tasks(worker_id=worker.id, queues=["default"], limit=10) == []

    assert Stager().run_once() == 0  # not due: it stays SCHEDULED, out of the claim's index
    assert models.Task.objects.get(id=int(result.id)).status == "SCHEDULED"

    # Move the task's due time, not any clock: due one second ago by the database's now().
    raw_conn.execute(
        "UPDATE queueapp_task_live SET run_after = now() - interval '1 second' WHERE id = %s",
        [int(result.id)],
    )
    assert store.claim_tasks(worker_id=worker.id, queues=["default"], limit=10) == []  # the stager's job
    assert Stager().run_once() == 1
    assert [row.id for row in store.claim_tasks(worker_id=worker.id, queues=["default"], limit=10)] == [
        int(result.id)
    ]


def test_claim_sets_running_fields() -> None:
    result = tasks.add.enqueue(1, 2)
    worker = make_worker()
    (row,) = store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    assert (row.id, row.status, row.attempts, row.worker_id) == (int(result.id), "RUNNING", 1, worker.id)
    assert row.worker_ids == [worker.id]
    assert row.started_at is not None
    assert (row.args, row.kwargs) == ([1, 2], {})


def test_claim_plan_walks_the_partial_index_without_sorting(raw_conn: psycopg.Connection) -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(5000))
    raw_conn.execute("ANALYZE queueapp_task_live")
    worker = make_worker()
    params = {"worker_id": worker.id, "queues": ["default"], "limit": 10, "flow_epoch": 0}
    plan = "\n".join(row[0] for row in raw_conn.execute("EXPLAIN " + QUERIES["claim_tasks"], params))
    assert "task_live_claim_idx" in plan, plan
    assert "Sort" not in plan, plan


def test_without_statistics_the_worker_claim_still_walks_the_claim_index(
    raw_conn: psycopg.Connection,
) -> None:
    """A burst into a table that was never analyzed (a new installation, or just after a TRUNCATE):
    the planner would read every READY task of the queue and sort them, per claim. The worker's
    round sets claim_plan first; with it the claim walks the claim index in order and stops after
    LIMIT rows."""
    tasks.add.enqueue_many(((i, i), {}) for i in range(40_000))
    # Set-up: the catalog as it is before any ANALYZE (earlier tests' statistics would hide it).
    raw_conn.execute("DELETE FROM pg_statistic WHERE starelid = 'queueapp_task_live'::regclass")
    raw_conn.execute(
        "UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE oid = 'queueapp_task_live'::regclass"
    )
    worker = make_worker()
    params = {"worker_id": worker.id, "queues": ["default"], "limit": 10, "flow_epoch": 0}

    def plan(*settings: str) -> str:
        with raw_conn.transaction(force_rollback=True):
            for setting in settings:
                raw_conn.execute(setting)
            return "\n".join(row[0] for row in raw_conn.execute("EXPLAIN " + QUERIES["claim_tasks"], params))

    trap = plan()
    assert "Sort" in trap, trap  # the trap, without the setting
    with_setting = plan(store.timeouts.UNLIMITED_CLAIM_PLAN)
    assert "task_live_claim_idx" in with_setting, with_setting
    assert "Sort" not in with_setting, with_setting


def test_a_workers_claim_loads_arguments_as_they_were_enqueued() -> None:
    """The worker's own connection loads jsonb as text and decodes it itself (store.session._json):
    nested, non-ASCII and empty arguments come back as they went in, and no two tasks share a list
    or dict (a task that mutates its arguments changes nobody else's)."""
    shapes = [
        ((), {}),
        (([1, {"k": None}], "zoë ✓", 1.5, True), {"name": "日本", "nested": {"a": [], "b": {}}}),
        ((), {}),
    ]
    for args, kwargs in shapes:
        tasks.echo.enqueue(*args, **kwargs)
    session = store.WorkerSession(worker_id=make_worker().id, queues=["default"])
    try:
        _, rows = session.round([], limit=10)
    finally:
        session.close()
    assert [(row.args, row.kwargs) for row in rows] == [(list(args), kwargs) for args, kwargs in shapes]
    assert [row.errors for row in rows] == [[], [], []]
    first, _, last = rows
    assert first.args is not last.args
    assert first.kwargs is not last.kwargs
    assert first.errors is not last.errors
