"""Enqueue: transactional, one notification per queue, clear errors for bad input."""

from __future__ import annotations

import copy
import datetime as dt
import logging
import pickle
from typing import Any

import psycopg
import pytest
from django.db import transaction
from django.tasks import default_task_backend
from django.tasks.exceptions import InvalidTask
from django.tasks.signals import task_enqueued
from django.test import override_settings
from django.utils import timezone

from queueapp import exceptions, models
from tests import tasks
from tests.conftest import collect_until_sentinel

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    """Raised inside a transaction to roll it back."""


def test_rolled_back_enqueue_leaves_no_row_and_no_notification(
    listener: psycopg.Connection, raw_conn: psycopg.Connection
) -> None:
    def enqueue_then_fail() -> None:
        with transaction.atomic():
            tasks.add.enqueue(1, 2)
            assert models.Task.objects.count() == 1  # visible inside the transaction
            raise Boom

    with pytest.raises(Boom):
        enqueue_then_fail()

    assert models.Task.objects.count() == 0
    assert collect_until_sentinel(listener, raw_conn) == []


def test_committed_enqueue_notifies_its_queue(
    listener: psycopg.Connection, raw_conn: psycopg.Connection
) -> None:
    tasks.send_email.enqueue("a@example.com")
    assert collect_until_sentinel(listener, raw_conn) == ["emails"]


def test_committed_bulk_of_1000_sends_one_notification_per_queue(
    listener: psycopg.Connection, raw_conn: psycopg.Connection
) -> None:
    with transaction.atomic():
        results = tasks.add.enqueue_many(((i, i), {}) for i in range(500))
        results += tasks.send_email.enqueue_many(((f"u{i}@example.com",), {}) for i in range(500))

    assert len(results) == 1000
    assert models.Task.objects.filter(status="READY").count() == 1000
    assert sorted(collect_until_sentinel(listener, raw_conn)) == ["default", "emails"]


def test_many_single_enqueues_in_one_transaction_notify_once(
    listener: psycopg.Connection, raw_conn: psycopg.Connection
) -> None:
    with transaction.atomic():
        for i in range(50):
            tasks.add.enqueue(i, i)
    assert collect_until_sentinel(listener, raw_conn) == ["default"]


def test_deferred_task_wakes_nobody(listener: psycopg.Connection, raw_conn: psycopg.Connection) -> None:
    later = timezone.now() + dt.timedelta(hours=1)
    tasks.add.using(run_after=later).enqueue(1, 1)
    assert collect_until_sentinel(listener, raw_conn) == []
    assert models.Task.objects.get().run_after == later


def test_bulk_results_match_input_order_and_rows() -> None:
    results = tasks.echo.enqueue_many([((i,), {"k": i}) for i in range(20)])
    for i, result in enumerate(results):
        row = models.Task.objects.get(id=int(result.id))
        assert (row.args, row.kwargs) == ([i], {"k": i})
        assert result.enqueued_at == row.enqueued_at


def test_an_enqueued_results_arguments_are_normalized_as_stored() -> None:
    """Plain values are copied as they are; tuples, bytes and nested values come back as their JSON
    stored them (what Django's normalize_json makes of them), in a single enqueue and in a bulk one
    alike; the caller's values are not shared."""
    plain_args, plain_kwargs = [7, "x", 1.5, True, None], {"a": "b"}
    shaped_args, shaped_kwargs = ((1, (2, 3)), b"raw", {"k": (4,)}), {"t": (5, 6), "b": b"v"}
    calls = [(plain_args, plain_kwargs), (shaped_args, shaped_kwargs)] * 6  # 12: the COPY path
    for results in (
        [tasks.echo.enqueue(*args, **kwargs) for args, kwargs in calls[:2]],
        tasks.echo.enqueue_many(calls),
    ):
        assert [(result.args, result.kwargs) for result in results[:2]] == [
            (plain_args, plain_kwargs),
            ([[1, [2, 3]], "raw", {"k": [4]}], {"t": [5, 6], "b": "v"}),
        ]
        assert results[0].args is not plain_args
        assert results[0].kwargs is not plain_kwargs


def test_bulk_results_are_built_when_read_and_show_the_arguments_as_stored() -> None:
    """enqueue_many's results are built the first time the list is used (the COPY path): they show
    what was stored, not what the caller did to its own values since, and each is built once."""
    shared = ["before"]
    results = tasks.echo.enqueue_many([((shared, i), {"k": {"n": i}}) for i in range(12)])
    shared.append("after")
    assert len(results) == 12
    assert (results[3].args, results[3].kwargs) == ([["before"], 3], {"k": {"n": 3}})
    assert results[3] is results[3]
    assert results[-1].args == [["before"], 11]
    assert [result.id for result in results[:2]] == [result.id for result in list(results)[:2]]
    assert len(results + results) == 24  # a list in all but its type
    assert copy.copy(results)[4] is results[4]
    unread = tasks.echo.enqueue_many([((i,), {}) for i in range(12)])
    assert len(unread) == 12
    assert [r.args for r in pickle.loads(pickle.dumps(unread))] == [[i] for i in range(12)]  # noqa: S301 (our own bytes)
    stored = tasks.echo.get_result(results[5].id)
    assert (stored.args, stored.kwargs) == (results[5].args, results[5].kwargs)
    assert stored.enqueued_at == results[5].enqueued_at


@pytest.mark.parametrize("count", [3, 12], ids=["one INSERT each", "COPY"])
def test_enqueued_results_are_what_get_result_reads_back(count: int) -> None:
    """Several tasks in one batch, due now and later: each result is the stored task's (its task,
    id, arguments as stored, enqueue time), and a single enqueue's arguments take the same form."""
    later = timezone.now() + dt.timedelta(hours=1)
    calls = [
        (tasks.echo, (i, i), {"d": {1: "a"}}) if i % 2 else (tasks.add.using(run_after=later), (i, i), {})
        for i in range(count)
    ]
    for result, (task, _, _) in zip(default_task_backend.enqueue_many(calls), calls, strict=True):
        stored = default_task_backend.get_result(result.id)
        assert result.task is task
        assert (result.id, result.args, result.kwargs) == (stored.id, stored.args, stored.kwargs)
        assert result.enqueued_at == stored.enqueued_at
    single = tasks.echo.enqueue(d={1: "a"})
    assert single.kwargs == {"d": {"1": "a"}} == tasks.echo.get_result(single.id).kwargs


def test_task_enqueued_reaches_a_receiver_once_for_every_task_created() -> None:
    heard: list[str] = []

    def receiver(sender: type, task_result: Any, **kwargs: Any) -> None:
        heard.append(task_result.id)

    task_enqueued.connect(receiver)
    try:
        one = tasks.echo.enqueue(1)
        few = tasks.echo.enqueue_many([((i,), {}) for i in range(3)])  # one INSERT each
        many = tasks.echo.enqueue_many([((i,), {}) for i in range(12)])  # COPY
        first = tasks.refresh.enqueue(7)
        held = tasks.refresh.enqueue(7)  # the holder's result: nothing new was enqueued
    finally:
        task_enqueued.disconnect(receiver)
    assert held.id == first.id
    assert heard == [one.id, *(r.id for r in few), *(r.id for r in many), first.id]


def test_django_tasks_own_enqueued_line_is_logged_when_its_logger_is_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing else listening, task_enqueued is sent only if Django's own receiver would log."""
    tasks.echo.enqueue_many([((i,), {}) for i in range(12)])
    assert not [r for r in caplog.records if "enqueued" in r.getMessage()]
    caplog.set_level(logging.DEBUG, logger="django.tasks")
    results = [tasks.echo.enqueue(1), *tasks.echo.enqueue_many([((i,), {}) for i in range(12)])]
    lines = [
        r.getMessage() for r in caplog.records if r.name == "django.tasks" and "enqueued" in r.getMessage()
    ]
    assert lines == [f"Task id={r.id} path=tests.tasks.echo enqueued backend=default" for r in results]


def test_bulk_with_one_bad_call_stores_nothing() -> None:
    calls = [((i,), {}) for i in range(10)] + [((object(),), {})]
    with pytest.raises(InvalidTask, match="must be JSON"):
        tasks.echo.enqueue_many(calls)
    assert models.Task.objects.count() == 0


def test_a_bad_call_late_in_a_bulk_inside_a_transaction_keeps_that_transaction_usable() -> None:
    """Calls are encoded while the COPY streams: the 3,000th fails after rows were sent, yet none
    stays and the caller's own work in the same transaction commits."""
    calls = [((i,), {}) for i in range(3000)] + [((float("nan"),), {})] + [((1,), {})]
    with transaction.atomic():
        kept = tasks.echo.enqueue("mine")
        with pytest.raises(InvalidTask, match="must be JSON"):
            tasks.echo.enqueue_many(calls)
        also_kept = tasks.echo.enqueue("mine too")
    stored = sorted(models.Task.objects.values_list("id", flat=True))
    assert stored == sorted([int(kept.id), int(also_kept.id)])


def test_bulk_mixes_tasks_queues_and_deferral_and_keeps_its_order(raw_conn: psycopg.Connection) -> None:
    later = timezone.now() + dt.timedelta(hours=1)
    calls = [
        (tasks.echo, (1,), {}),
        (tasks.send_email.using(priority=7), ("a@example.com",), {}),
        (tasks.echo.using(run_after=later), (3,), {}),
    ]
    backend = tasks.echo.get_backend()
    results = backend.enqueue_many(calls)
    rows = {row.id: row for row in models.Task.objects.all()}
    stored = [rows[int(result.id)] for result in results]
    assert [(row.queue_name, row.priority, row.args) for row in stored] == [
        ("default", 0, [1]),
        ("emails", 7, ["a@example.com"]),
        ("default", 0, [3]),
    ]
    assert stored[2].run_after == later
    assert stored[0].run_after == stored[0].enqueued_at == results[0].enqueued_at
    assert [int(result.id) for result in results] == sorted(int(result.id) for result in results)


def test_bulk_stores_text_that_copy_must_escape_exactly_as_given() -> None:
    """enqueue_many formats COPY's text itself: backslashes, tabs, newlines, quotes, non-ASCII."""
    tricky = ["back\\slash", "tab\there", "new\nline\r", 'quote " and \\N', "naïve 東京 \u2028", "\\\\N"]
    later = timezone.now() + dt.timedelta(minutes=5)
    results = tasks.echo.using(run_after=later).enqueue_many([((text,), {"k": text}) for text in tricky])
    for text, result in zip(tricky, results, strict=True):
        row = models.Task.objects.get(id=int(result.id))
        assert (row.args, row.kwargs, row.run_after) == ([text], {"k": text}, later)
        assert tasks.echo.get_result(result.id).args == [text]
    timed = tasks.sleep_then_return.using(timeout=2.5, max_attempts=4).enqueue_many([((0.1,), {})])
    row = models.Task.objects.get(id=int(timed[0].id))
    assert (row.timeout, row.max_attempts, row.attempts, row.status) == (2.5, 4, 0, "READY")
    assert (row.worker_ids, row.errors, row.cancel_requested) == ([], [], False)


def test_a_few_tasks_insert_row_by_row_and_ten_or_more_go_by_copy() -> None:
    """A REST submission of one task must not pay COPY's set-up (ids, COPY, NOTIFY, a savepoint)."""
    from django.db import connection

    seen: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(
            "insert" if "INSERT INTO queueapp_task" in sql else "ids" if "nextval" in sql else "other"
        )
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        tasks.echo.enqueue_many([((i,), {}) for i in range(9)])
        few = list(seen)
        seen.clear()
        tasks.echo.enqueue_many([((i,), {}) for i in range(10)])
    assert few == ["insert"] * 9
    assert seen == ["ids", "other"]  # then the COPY itself, then one NOTIFY per queue
    assert models.Task.objects.count() == 19


def test_enqueue_is_prepared_once_on_the_callers_connection() -> None:
    from django.db import connection

    for i in range(3):
        tasks.echo.enqueue(i)
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [text for (text,) in cursor.fetchall()]
    assert sum("INSERT INTO queueapp_task" in text for text in prepared) == 1


def test_prepared_statements_can_be_turned_off_for_poolers_that_cannot_keep_them(settings: Any) -> None:
    from django.db import connection

    settings.TASKQUEUE = {**settings.TASKQUEUE, "PREPARED_STATEMENTS": "off"}
    connection.close()
    results = [tasks.echo.enqueue(i) for i in range(3)] + tasks.echo.enqueue_many([((9,), {})])
    assert models.Task.objects.filter(id__in=[int(result.id) for result in results]).count() == 4
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cursor.fetchone() == (0,)


def test_enqueue_stores_task_defaults() -> None:
    result = tasks.send_email.enqueue("x@example.com")
    row = models.Task.objects.get(id=int(result.id))
    assert row.task_path == "tests.tasks.send_email"
    assert (row.queue_name, row.priority, row.max_attempts, row.attempts) == ("emails", 5, 3, 0)
    assert row.run_after == row.enqueued_at  # not deferred: run_after is the enqueue time
    assert models.Task.objects.get(id=int(tasks.flaky.enqueue(1).id)).max_attempts == 5
    assert models.Task.objects.get(id=int(tasks.add.using(max_attempts=9).enqueue(1, 2).id)).max_attempts == 9


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: tasks.add.using(priority=101), "priority must be a whole number between -100 and 100"),
        (lambda: tasks.add.using(priority=-101), "priority must be a whole number between -100 and 100"),
        (lambda: tasks.add.using(queue_name="nope"), "Queue 'nope' is not valid"),
        (lambda: tasks.add.using(run_after=dt.datetime(2030, 1, 1)), "run_after must be an aware datetime"),
        (lambda: tasks.add.using(max_attempts=0), "max_attempts must be a whole number of at least 1"),
        # It once reached the database, whose integer column refused it with a DataError.
        (lambda: tasks.add.using(max_attempts=2**31), "at most 1,000,000, not 2147483648"),
    ],
)
def test_invalid_task_options_raise_invalid_task(make: object, message: str) -> None:
    with pytest.raises(InvalidTask, match=message):
        make()  # type: ignore[operator]
    assert models.Task.objects.count() == 0


def _contains_itself() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((object(),), {}),
        ((), {"when": dt.datetime.now(tz=dt.UTC)}),
        ((float("nan"),), {}),
        ((), {"x": {1, 2}}),
        ((_contains_itself(),), {}),
        ((), {"deep": _nested(100_000)}),
    ],
)
def test_arguments_that_are_not_json_are_rejected(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    with pytest.raises(exceptions.ArgumentsNotJSON, match="task arguments must be JSON"):
        tasks.echo.enqueue(*args, **kwargs)
    assert models.Task.objects.count() == 0


@override_settings(TASKQUEUE={"MAX_ARGS_BYTES": 1000, "IMPORTS": []})
def test_arguments_over_the_size_limit_are_rejected() -> None:
    with pytest.raises(exceptions.ArgumentsTooLarge, match="the limit is 1000"):
        tasks.echo.enqueue("x" * 1000)
    assert models.Task.objects.count() == 0


def test_database_caps_argument_size_even_without_python_checks(raw_conn: psycopg.Connection) -> None:
    huge = '"' + "x" * (models.ARGS_HARD_LIMIT_BYTES + 1) + '"'
    with pytest.raises(psycopg.errors.CheckViolation, match="task_live_args_size_cap"):
        raw_conn.execute(
            "INSERT INTO queueapp_task_live (task_path, queue_name, priority, status, args, kwargs, attempts,"
            " max_attempts, worker_ids, errors, cancel_requested)"
            " VALUES ('x', 'default', 0, 'READY', jsonb_build_array(%s::text), '{}', 0, 1, '{}', '[]',"
            " false)",
            [huge],
        )


@pytest.mark.parametrize("bad", ["nul \x00 inside", "lone \ud800 surrogate", {"key\x00": 1}])
def test_strings_postgresql_cannot_store_are_refused_before_the_insert(bad: object) -> None:
    with pytest.raises(exceptions.ArgumentsNotJSON):
        tasks.echo.enqueue(bad)
    assert models.Task.objects.count() == 0
    tasks.echo.enqueue("a literal \\u0000 is fine")  # an escaped backslash, not a NUL
