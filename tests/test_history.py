"""Live work apart from history: a task ends by moving to history in the statement that records its
end, reads see it exactly once, a retry brings it back under its id, the stager makes deferred tasks
READY, partitions are made ahead, and a migration moves an existing installation's finished tasks."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
import uuid

import psycopg
import pytest
from django.db import connection
from django.tasks import TaskResultStatus, default_task_backend
from django.utils import timezone

from queueapp import models, store
from queueapp.sql import QUERIES
from tests import tasks
from tests.conftest import collect_until_sentinel, make_worker
from tests.helpers import ROOT, database_url
from workers.stager import Stager

pytestmark = pytest.mark.django_db(transaction=True)

ERROR = {"exception_class_path": "builtins.RuntimeError", "message": "boom", "traceback": ""}
NO_BACKOFF = {"backoff_base": 0.0, "backoff_max": 0.0}


def where(task_id: int) -> list[tuple[str, str]]:
    """Which tables hold the task, with its status there."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 'live', status FROM queueapp_task_live WHERE id = %s"
            " UNION ALL SELECT 'history', status FROM queueapp_task_history WHERE id = %s",
            [task_id, task_id],
        )
        return [(table, status) for table, status in cursor.fetchall()]


def claim(worker: models.Worker, n: int) -> dict[int, store.TaskRow]:
    return {row.id: row for row in store.claim_tasks(worker_id=worker.id, queues=["default"], limit=n)}


def test_every_way_a_task_ends_moves_it_to_history_once(raw_conn: psycopg.Connection) -> None:
    succeeded, failed, running_cancelled, lost = (
        int(tasks.add.using(max_attempts=1).enqueue(i, i).id) for i in range(4)
    )
    waiting_cancelled = int(tasks.add.enqueue(9, 9).id)
    worker, doomed = make_worker(), make_worker()
    rows = claim(worker, 3)
    claim(doomed, 1)
    assert set(rows) == {succeeded, failed, running_cancelled}
    assert where(lost) == [("live", "RUNNING")]

    store.finish_task(task_id=succeeded, worker_id=worker.id, attempt=1, return_value_json='{"ok": 1}')
    store.fail_task(task_id=failed, worker_id=worker.id, attempt=1, error=ERROR, **NO_BACKOFF)
    assert store.cancel_task(waiting_cancelled) == "CANCELLED"
    assert store.cancel_task(running_cancelled) == "RUNNING"  # a request: it is still running
    assert where(running_cancelled) == [("live", "RUNNING")]
    store.finish_task(task_id=running_cancelled, worker_id=worker.id, attempt=1, return_value_json="1")
    raw_conn.execute("UPDATE queueapp_worker SET state = 'LOST' WHERE id = %s", [doomed.id])
    assert store.reap_workers(stale_after=30, **NO_BACKOFF).tasks_failed == 1

    assert where(succeeded) == [("history", "SUCCESSFUL")]
    assert where(failed) == [("history", "FAILED")]
    assert where(waiting_cancelled) == [("history", "CANCELLED")]
    assert where(running_cancelled) == [("history", "CANCELLED")]
    assert where(lost) == [("history", "FAILED")]
    # get_result reads history as it read the one table before.
    result = default_task_backend.get_result(str(succeeded))
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, {"ok": 1})
    assert default_task_backend.get_result(str(lost)).errors[0].exception_class_path == (
        "queueapp.exceptions.WorkerLost"
    )
    ended = models.Task.objects.get(id=failed)
    assert (ended.finished_at is not None, ended.errors[0]["message"]) == (True, "boom")


def test_a_snapshot_sees_each_task_exactly_once_while_tasks_move(raw_conn: psycopg.Connection) -> None:
    """A reader counting every task through the view, over and over while 600 tasks end in batches,
    never sees one twice or misses one: the move is one statement."""
    tasks.add.enqueue_many(((i, i), {}) for i in range(600))
    worker = make_worker()
    counts: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        with psycopg.connect(raw_conn.info.dsn, autocommit=True) as conn:
            while not stop.is_set():
                counts.append(conn.execute("SELECT count(*) FROM queueapp_task").fetchone()[0])  # type: ignore[index]

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        while rows := claim(worker, 25):
            for row in rows.values():
                if row.id % 3:
                    store.finish_task(task_id=row.id, worker_id=worker.id, attempt=1, return_value_json="0")
                else:
                    store.fail_task(task_id=row.id, worker_id=worker.id, attempt=1, error=ERROR, **NO_BACKOFF)
            Stager().run_once()
    finally:
        stop.set()
        thread.join(30)
    assert len(counts) > 20, "the reader hardly ran"
    assert set(counts) == {600}


def test_a_retry_moves_a_finished_task_back_under_its_id_and_wakes_a_worker(
    listener: psycopg.Connection, raw_conn: psycopg.Connection
) -> None:
    result = tasks.add.using(max_attempts=1).enqueue(1, 2)
    task_id = int(result.id)
    worker = make_worker()
    claim(worker, 1)
    store.fail_task(task_id=task_id, worker_id=worker.id, attempt=1, error=ERROR, **NO_BACKOFF)
    collect_until_sentinel(listener, raw_conn)  # drop the enqueue's notification

    assert default_task_backend.retry(result.id) is True
    assert collect_until_sentinel(listener, raw_conn) == ["default"]
    assert where(task_id) == [("live", "READY")]
    again = models.Task.objects.get(id=task_id)
    assert (again.attempts, again.max_attempts, len(again.errors)) == (1, 4, 1)  # errors kept, fresh budget
    assert default_task_backend.retry(result.id) is False  # READY now: nothing to retry
    assert claim(worker, 1)[task_id].attempts == 2


def test_the_stager_makes_due_tasks_ready_and_notifies_their_queue(
    listener: psycopg.Connection, raw_conn: psycopg.Connection
) -> None:
    later = timezone.now() + dt.timedelta(hours=1)
    due = int(tasks.send_email.using(run_after=later).enqueue("a@example.com").id)
    not_due = int(tasks.add.using(run_after=later).enqueue(1, 1).id)
    assert collect_until_sentinel(listener, raw_conn) == []  # SCHEDULED tasks wake nobody
    assert Stager().run_once() == 0
    raw_conn.execute(
        "UPDATE queueapp_task_live SET run_after = now() - interval '1 second' WHERE id = %s", [due]
    )

    assert store.stage_tasks(limit=10) == {"emails": 1}
    assert collect_until_sentinel(listener, raw_conn) == ["emails"]
    assert (where(due), where(not_due)) == ([("live", "READY")], [("live", "SCHEDULED")])
    assert default_task_backend.get_result(str(not_due)).status == TaskResultStatus.READY  # django's word


def test_deferred_tasks_ahead_cost_the_claim_no_index_reads(raw_conn: psycopg.Connection) -> None:
    """20,000 tasks deferred an hour ahead at a higher priority than 20 READY ones: the claim's index
    holds READY tasks only, so it reads a few pages, not one per deferred task."""
    later = timezone.now() + dt.timedelta(hours=1)
    tasks.add.using(priority=100, run_after=later).enqueue_many(((i, i), {}) for i in range(20_000))
    tasks.add.enqueue_many(((i, i), {}) for i in range(20))
    raw_conn.execute("VACUUM ANALYZE queueapp_task_live")
    worker = make_worker()
    params = {"worker_id": worker.id, "queues": ["default"], "limit": 10, "flow_epoch": 0}
    with raw_conn.transaction(force_rollback=True):
        (plan,) = raw_conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERIES["claim_tasks"], params
        ).fetchone()  # type: ignore[misc]

    def scans(node: dict[str, object]) -> list[dict[str, object]]:
        found = [node] if node.get("Index Name") == "task_live_claim_idx" else []
        for child in node.get("Plans", []):  # type: ignore[attr-defined]
            found += scans(child)
        return found

    (scan,) = scans(plan[0]["Plan"])
    assert scan["Actual Rows"] == 10
    pages = int(scan["Shared Hit Blocks"]) + int(scan["Shared Read Blocks"])  # type: ignore[call-overload]
    assert pages < 20, f"the claim read {pages} pages to find 10 READY tasks"


def test_history_partitions_are_made_ahead_by_one_session_and_a_day_with_stray_rows_is_skipped(
    raw_conn: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    today = store.database_now().astimezone(dt.UTC).date()
    names = [store.history.partition_name(today + dt.timedelta(days=n)) for n in range(8)]
    assert set(names) <= set(store.history_partitions())  # the migration made the first week
    assert store.ensure_history_partitions() == []
    raw_conn.execute(f"DROP TABLE {names[6]}, {names[7]}")

    with raw_conn.transaction():  # another session is at it: this one leaves it alone
        raw_conn.execute("SELECT pg_advisory_xact_lock(hashtext('taskqueue.partitions'))")
        assert store.ensure_history_partitions() == []

    # A task that ends on a day without a partition lands in the default one, and is still found;
    # that day then cannot be attached (its rows are in the default partition): skipped and said.
    result = tasks.add.enqueue(1, 1)
    worker = make_worker()
    claim(worker, 1)
    store.finish_task(task_id=int(result.id), worker_id=worker.id, attempt=1, return_value_json="2")
    raw_conn.execute(
        "UPDATE queueapp_task_history SET finished_at = %s WHERE id = %s",
        [dt.datetime.combine(today + dt.timedelta(days=6), dt.time(12), tzinfo=dt.UTC), int(result.id)],
    )
    with caplog.at_level(logging.WARNING, logger="queueapp.store.history"):
        assert store.ensure_history_partitions() == [names[7]]
    assert f"history_partition_not_created partition={names[6]}" in caplog.text
    assert default_task_backend.get_result(result.id).return_value == 2
    # Once the stray row is gone, the day is made (and the next test finds the week complete).
    raw_conn.execute("DELETE FROM queueapp_task_history WHERE id = %s", [int(result.id)])
    assert store.ensure_history_partitions() == [names[6]]


def test_a_migration_moves_an_installations_finished_tasks_in_batches() -> None:
    """An installation from before the split: 0001's one table with finished, waiting, deferred and
    running tasks. After `migrate` each is where it belongs, under its id, and the view shows all."""
    name = f"tq_migrate_{uuid.uuid4().hex[:8]}"
    base = database_url()
    url = base.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(base.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tests.settings"}

    def migrate(*target: str) -> None:
        proc = subprocess.run(
            [sys.executable, "manage.py", "migrate", *target, "-v", "0"],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    try:
        migrate("queueapp", "0001")
        statuses = ["SUCCESSFUL", "FAILED", "CANCELLED", "READY", "RUNNING", "DEFERRED"]
        with psycopg.connect(url, autocommit=True) as conn:
            worker = uuid.uuid4()
            conn.execute(
                "INSERT INTO queueapp_worker (id, hostname, pid, queues, concurrency, state, started_at,"
                " last_heartbeat_at) VALUES (%s, 'old', 1, '{default}', 1, 'ALIVE', now(), now())",
                [worker],
            )
            for i in range(12_000):  # more than one batch of 5,000
                status = statuses[i % 6]
                conn.execute(
                    "INSERT INTO queueapp_task (task_path, queue_name, priority, status, args, kwargs,"
                    " run_after, enqueued_at, finished_at, attempts, max_attempts, worker_ids, errors,"
                    " return_value, cancel_requested, worker_id) VALUES ('tests.tasks.add', 'default', 0,"
                    " %s, '[1, 2]', '{}', now() + %s, now(), %s, 1, 3, '{}', '[]', %s, false, %s)",
                    [
                        "READY" if status == "DEFERRED" else status,
                        dt.timedelta(hours=1 if status == "DEFERRED" else 0),
                        timezone.now() - dt.timedelta(days=i % 3) if i % 6 < 3 else None,
                        json.dumps(i) if status == "SUCCESSFUL" else None,
                        worker if status == "RUNNING" else None,
                    ],
                )
        migrate()
        with psycopg.connect(url) as conn:
            live = dict(conn.execute("SELECT status, count(*) FROM queueapp_task_live GROUP BY 1").fetchall())
            history = dict(
                conn.execute("SELECT status, count(*) FROM queueapp_task_history GROUP BY 1").fetchall()
            )
            view = conn.execute("SELECT count(*), count(DISTINCT id) FROM queueapp_task").fetchone()
            sample = conn.execute("SELECT return_value FROM queueapp_task_history WHERE id = 1").fetchone()
            validated = conn.execute(
                "SELECT convalidated FROM pg_constraint WHERE conname = 'task_live_status_live'"
            ).fetchone()
            old_indexes = conn.execute(
                "SELECT count(*) FROM pg_indexes WHERE indexname IN"
                " ('task_status_id_idx', 'task_queue_id_idx', 'task_path_id_idx', 'task_finished_idx')"
            ).fetchone()
            # 0004: the unique-key indexes, built concurrently, valid on live and on every partition.
            unique_indexes = conn.execute(
                "SELECT bool_and(i.indisvalid), count(*)"
                " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE c.relname IN ('task_live_unique_key', 'task_history_unique_key_idx')"
                " OR c.relname LIKE 'queueapp_task_history_%%_unique_key_idx'"
            ).fetchone()
            partitions = conn.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'queueapp_task_history'::regclass"
            ).fetchone()
        assert live == {"READY": 2000, "RUNNING": 2000, "SCHEDULED": 2000}
        assert history == {"SUCCESSFUL": 2000, "FAILED": 2000, "CANCELLED": 2000}
        assert view == (12_000, 12_000)
        assert sample == (0,)
        assert validated == (True,)
        assert old_indexes == (0,)
        assert unique_indexes == (True, 2 + partitions[0])
    finally:
        with psycopg.connect(base.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
