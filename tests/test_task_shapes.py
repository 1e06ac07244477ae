"""Rows the API would never write: args not an array, kwargs not an object; and return values too
large to keep. The database refuses the first (live table, history, partitions made later); the
worker checks them again before calling a task, and caps the second."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import IntegrityError, connection

from queueapp import models, store
from tests import tasks
from tests.conftest import make_worker
from tests.helpers import ROOT, database_url
from tests.test_worker_services import claim, execute

pytestmark = pytest.mark.django_db(transaction=True)

INSERT_LIVE = (
    "INSERT INTO queueapp_task_live (task_path, queue_name, priority, status, args, kwargs, attempts,"
    " max_attempts, worker_ids, errors, cancel_requested) VALUES ('tests.tasks.add', 'default', 0, 'READY',"
    " %s, %s, 0, 3, '{}', '[]', false) RETURNING id"
)
INSERT_HISTORY = (
    "INSERT INTO queueapp_task_history (id, task_path, queue_name, priority, status, args, kwargs,"
    " run_after, enqueued_at, attempts, max_attempts, worker_ids, errors, cancel_requested, finished_at)"
    " VALUES (1, 'tests.tasks.add', 'default', 0, 'SUCCESSFUL', %s, %s, now(), now(), 1, 3, '{}', '[]',"
    " false, %s)"
)
SHAPES = [('"12"', "{}"), ('{"a": 1}', "{}"), ("[1, 2]", "[]"), ("[1, 2]", '"a"')]


@pytest.mark.parametrize(("args", "kwargs"), SHAPES)
def test_the_live_table_refuses_args_that_are_not_an_array_or_kwargs_not_an_object(
    args: str, kwargs: str
) -> None:
    with (
        pytest.raises(IntegrityError, match=r"task_live_(args_array|kwargs_object)"),
        connection.cursor() as cur,
    ):
        cur.execute(INSERT_LIVE, [args, kwargs])
    assert not models.LiveTask.objects.exists()


@pytest.mark.parametrize(("args", "kwargs"), SHAPES)
def test_history_and_a_partition_made_later_refuse_them_too(args: str, kwargs: str) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT now()")
        last = cur.fetchone()[0].astimezone(dt.UTC).date() + dt.timedelta(days=store.history.DAYS_AHEAD)
        cur.execute(f"DROP TABLE {store.history.partition_name(last)}")
    assert store.ensure_history_partitions() == [store.history.partition_name(last)]
    for finished_at in (dt.datetime.now(dt.UTC), dt.datetime.combine(last, dt.time(12), tzinfo=dt.UTC)):
        with (
            pytest.raises(IntegrityError, match=r"task_history_(args_array|kwargs_object)"),
            connection.cursor() as cur,
        ):
            cur.execute(INSERT_HISTORY, [args, kwargs, finished_at])
    assert not models.TaskHistory.objects.exists()


def test_every_partition_carries_both_checks_validated() -> None:
    store.ensure_history_partitions()
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname, count(*) FILTER (WHERE k.convalidated) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_constraint k ON k.conrelid = c.oid"
            " WHERE i.inhparent = 'queueapp_task_history'::regclass"
            " AND k.conname IN ('task_history_args_array', 'task_history_kwargs_object') GROUP BY 1"
        )
        checked = dict(cur.fetchall())
    assert set(checked) == set(store.history_partitions())
    assert set(checked.values()) == {2}


@pytest.fixture
def without_shape_checks() -> Iterator[None]:
    """The live table as an installation had it before migration 0007 (rows could be anything)."""
    with connection.cursor() as cur:
        cur.execute("ALTER TABLE queueapp_task_live DROP CONSTRAINT IF EXISTS task_live_args_array")
        cur.execute("ALTER TABLE queueapp_task_live DROP CONSTRAINT IF EXISTS task_live_kwargs_object")
    yield
    models.LiveTask.objects.all().delete()
    with connection.cursor() as cur:
        cur.execute(
            "ALTER TABLE queueapp_task_live"
            " ADD CONSTRAINT task_live_args_array CHECK (jsonb_typeof(args) = 'array'),"
            " ADD CONSTRAINT task_live_kwargs_object CHECK (jsonb_typeof(kwargs) = 'object')"
        )


@pytest.mark.parametrize(("args", "kwargs"), [('"12"', "{}"), ("[1, 2]", '["b"]')])
def test_a_row_written_around_the_checks_fails_its_attempt_and_is_never_called(
    without_shape_checks: None, args: str, kwargs: str
) -> None:
    with connection.cursor() as cur:
        cur.execute(INSERT_LIVE, [args, kwargs])
        (task_id,) = cur.fetchone()
    worker = make_worker()
    (row,) = claim(worker)
    assert execute(worker, row) == "retry"
    task = models.Task.objects.get(id=task_id)
    assert task.return_value is None
    (error,) = task.errors
    assert error["exception_class_path"] == "queueapp.exceptions.ArgumentsMalformed"
    assert "args must be a JSON array and kwargs a JSON object" in error["message"]


def test_a_return_value_over_the_limit_fails_the_attempt_and_is_not_stored(settings: Any) -> None:
    settings.TASKQUEUE = {**settings.TASKQUEUE, "MAX_RETURN_BYTES": 1000}
    small = tasks.echo.enqueue("é" * 400)  # 800 bytes of UTF-8 in the value: under the limit
    large = tasks.echo.enqueue("é" * 600)  # 600 characters, but 1,200 bytes
    worker = make_worker()
    assert [execute(worker, row) for row in claim(worker, limit=2)] == ["SUCCESSFUL", "retry"]
    assert models.Task.objects.get(id=int(small.id)).return_value == {"args": ["é" * 400], "kwargs": {}}
    task = models.Task.objects.get(id=int(large.id))
    assert (task.status, task.return_value) == ("SCHEDULED", None)
    (error,) = task.errors
    assert error["exception_class_path"] == "queueapp.exceptions.ReturnValueTooLarge"
    assert "is 1225 bytes of JSON; the limit is 1000 (TASKQUEUE['MAX_RETURN_BYTES'])" in error["message"]


def test_the_migration_stops_on_rows_that_break_the_checks_and_says_how_to_find_them() -> None:
    name = f"tq_shapes_{uuid.uuid4().hex[:8]}"
    server = database_url().rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    env = {**os.environ, "DATABASE_URL": f"{server}/{name}", "DJANGO_SETTINGS_MODULE": "tests.settings"}

    def migrate(*target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "migrate", *target, "-v", "0"],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip

    try:
        assert migrate("queueapp", "0006").returncode == 0
        with psycopg.connect(f"{server}/{name}", autocommit=True) as conn:
            bad = conn.execute(INSERT_LIVE, ['"12"', "{}"]).fetchone()
            conn.execute(INSERT_HISTORY, ["[1]", "{}", dt.datetime.now(dt.UTC)])
            refused = migrate()
            assert refused.returncode != 0
            assert "rows of queueapp_task_live break the check task_live_args_array" in refused.stderr
            assert "SELECT id, args, kwargs FROM queueapp_task_live WHERE NOT" in refused.stderr
            conn.execute("UPDATE queueapp_task_live SET args = '[1, 2]' WHERE id = %s", bad)
            assert migrate().returncode == 0
            validated = conn.execute(
                "SELECT conname, bool_and(convalidated) FROM pg_constraint WHERE conname LIKE 'task_%%_array'"
                " OR conname LIKE 'task_%%_object' GROUP BY 1 ORDER BY 1"
            ).fetchall()
        assert validated == [
            ("task_history_args_array", True),
            ("task_history_kwargs_object", True),
            ("task_live_args_array", True),
            ("task_live_kwargs_object", True),
        ]
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
