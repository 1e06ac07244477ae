"""The worker's parts, one run_once() at a time, in this process against the real database."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.tasks import TaskResultStatus, task_backends
from django.tasks.signals import task_finished, task_started

from queueapp import cancellation, models, store
from tests import tasks
from tests.conftest import conninfo, make_worker, waiting_worker
from tests.helpers import wait_for
from workers import db
from workers.executor import Executor
from workers.heartbeat import Heartbeat
from workers.lease import Lease
from workers.ledger import Ledger
from workers.listener import Listener, WorkerHearer
from workers.producer import Producer
from workers.services import ServiceThread

pytestmark = pytest.mark.django_db(transaction=True)


def claim(worker: models.Worker, limit: int = 1) -> list[store.TaskRow]:
    return store.claim_tasks(worker_id=worker.id, queues=["default", "emails"], limit=limit)


def executor_for(worker: models.Worker) -> Executor:
    return Executor(worker_id=worker.id, backend=task_backends["default"], give_up=threading.Event())


def execute(worker: models.Worker, row: store.TaskRow) -> str | None:
    """What a worker does with one task: run it, record a success in a round, report it."""
    executor = executor_for(worker)
    attempt = executor.run(row)
    if attempt.success is not None:
        producer = Producer(worker_id=worker.id, queues=["default"])
        done = producer.run_once(0, [attempt.success])
        producer.close()
        assert done is not None
        executor.complete(attempt, done[0].get(row.id))
    return attempt.outcome


@pytest.fixture
def signals() -> Any:
    seen: list[tuple[str, str, TaskResultStatus]] = []

    def on_started(sender: object, task_result: Any, **kwargs: object) -> None:
        seen.append(("started", task_result.id, task_result.status))

    def on_finished(sender: object, task_result: Any, **kwargs: object) -> None:
        seen.append(("finished", task_result.id, task_result.status))

    task_started.connect(on_started)
    task_finished.connect(on_finished)
    yield seen
    task_started.disconnect(on_started)
    task_finished.disconnect(on_finished)


def test_executor_runs_a_task_records_success_and_fires_signals(signals: list[Any]) -> None:
    result = tasks.add.enqueue(2, 3)
    worker = make_worker()
    (row,) = claim(worker)
    assert execute(worker, row) == "SUCCESSFUL"
    assert tasks.add.get_result(result.id).return_value == 5
    assert signals == [
        ("started", result.id, TaskResultStatus.RUNNING),
        ("finished", result.id, TaskResultStatus.SUCCESSFUL),
    ]


@pytest.fixture
def only_djangos_own_receivers() -> Any:
    """The tests' own task_finished receiver (tests.tasks) out of the way while the test runs."""
    task_finished.disconnect(tasks._fail_for_one_task)
    yield
    task_finished.connect(tasks._fail_for_one_task)


@pytest.mark.usefixtures("only_djangos_own_receivers")
def test_django_tasks_own_start_and_finish_lines_are_logged_at_their_levels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing else listening, task_started and task_finished are sent only when Django's own
    receivers would log: a start and a success at INFO, a failure at ERROR."""

    def lines() -> list[str]:
        found = [r.getMessage() for r in caplog.records if r.name == "django.tasks"]
        caplog.clear()
        return found

    worker = make_worker()
    caplog.set_level(logging.WARNING, logger="django.tasks")
    tasks.add.enqueue(1, 2)
    assert execute(worker, claim(worker)[0]) == "SUCCESSFUL"
    assert lines() == []
    failed = tasks.flaky.using(max_attempts=1).enqueue(3)
    assert execute(worker, claim(worker)[0]) == "FAILED"
    assert lines() == [f"Task id={failed.id} path=tests.tasks.flaky state=FAILED"]
    caplog.set_level(logging.INFO, logger="django.tasks")
    ok = tasks.add.enqueue(1, 2)
    assert execute(worker, claim(worker)[0]) == "SUCCESSFUL"
    assert lines() == [
        f"Task id={ok.id} path=tests.tasks.add state=RUNNING",
        f"Task id={ok.id} path=tests.tasks.add state=SUCCESSFUL",
    ]


@pytest.mark.usefixtures("only_djangos_own_receivers")
def test_a_tasks_result_is_made_only_for_whoever_sees_it(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing hears a success: no TaskResult is made for it (a third of a no-op's time in its
    thread); a task that takes its context gets one, and so does a failure (Django's own receiver
    logs it at ERROR: the test above)."""
    caplog.set_level(logging.WARNING, logger="django.tasks")
    worker = make_worker()
    executor = executor_for(worker)
    tasks.add.enqueue(1, 2)
    assert executor.run(claim(worker)[0]).result is None
    tasks.with_context.enqueue(value=1)
    assert executor.run(claim(worker)[0]).result is not None


@pytest.mark.usefixtures("only_djangos_own_receivers")
def test_a_failure_whose_row_cannot_make_a_result_is_recorded_unheard(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The result of a failure is made when it fails; should the row not make one (an error entry
    without its class path), the failure is recorded all the same and task_finished is not sent."""
    failed = tasks.flaky.using(max_attempts=1).enqueue(3)
    models.LiveTask.objects.filter(id=int(failed.id)).update(errors=[{"message": "no class path"}])
    worker = make_worker()
    assert execute(worker, claim(worker)[0]) == "FAILED"
    assert models.Task.objects.get(id=int(failed.id)).status == "FAILED"
    assert any(r.getMessage().startswith(f"result_unmade id={failed.id}") for r in caplog.records)


def test_executor_records_a_failure_for_retry_with_the_error(signals: list[Any]) -> None:
    result = tasks.flaky.enqueue(7)
    worker = make_worker()
    (row,) = claim(worker)
    assert execute(worker, row) == "retry"
    stored = models.Task.objects.get(id=int(result.id))
    assert stored.status == "SCHEDULED"  # waits out its backoff
    (error,) = stored.errors
    assert error["exception_class_path"] == "builtins.RuntimeError"
    assert error["message"] == "flaky 7"
    assert "raise RuntimeError" in error["traceback"]
    assert (error["attempt"], error["worker_id"]) == (1, str(worker.id))
    assert signals[-1] == ("finished", result.id, TaskResultStatus.READY)


def test_executor_passes_context_with_the_attempt_and_runs_async_tasks() -> None:
    ctx = tasks.with_context.enqueue(value=4)
    coro = tasks.async_add.enqueue(20, 22)
    worker = make_worker()
    for row in claim(worker, limit=2):
        assert execute(worker, row) == "SUCCESSFUL"
    assert tasks.with_context.get_result(ctx.id).return_value == {"attempt": 1, "value": 4}
    assert tasks.async_add.get_result(coro.id).return_value == 42


def test_a_return_value_that_is_not_json_fails_the_attempt() -> None:
    result = tasks.returns_a_set.enqueue()
    worker = make_worker()
    (row,) = claim(worker)
    assert execute(worker, row) == "retry"
    error = models.Task.objects.get(id=int(result.id)).errors[0]
    assert error["exception_class_path"] == "queueapp.exceptions.ReturnValueNotJSON"
    assert "return value is not JSON" in error["message"]


def test_an_unregistered_task_path_fails_without_importing_anything() -> None:
    import sys

    result = tasks.add.enqueue(1, 1)
    models.LiveTask.objects.filter(id=int(result.id)).update(task_path="antigravity.fly")
    worker = make_worker()
    (row,) = claim(worker)
    assert "antigravity" not in sys.modules
    assert execute(worker, row) == "retry"
    assert "antigravity" not in sys.modules
    error = models.Task.objects.get(id=int(result.id)).errors[0]
    assert error["exception_class_path"] == "queueapp.exceptions.UnknownTaskPath"


def test_a_fenced_out_result_is_dropped() -> None:
    result = tasks.add.enqueue(1, 1)
    worker = make_worker()
    (row,) = claim(worker)
    models.LiveTask.objects.filter(id=row.id).update(status="READY", worker=None)  # taken away meanwhile
    assert execute(worker, row) == "dropped"
    assert models.Task.objects.get(id=int(result.id)).status == "READY"


def test_a_round_records_successes_and_claims_for_the_free_slots_at_once() -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(10))
    worker = make_worker()
    producer = Producer(worker_id=worker.id, queues=["default"])
    executor = executor_for(worker)
    try:
        assert producer.run_once(0) == ({}, [])
        _, rows = round_(producer, 3)
        assert len(rows) == 3
        successes = [attempt.success for attempt in map(executor.run, rows) if attempt.success]
        statuses, more = round_(producer, 100, successes)
        assert statuses == {row.id: "SUCCESSFUL" for row in rows}
        assert len(more) == 7
        assert producer.healthy
        assert models.Task.objects.filter(status="SUCCESSFUL").count() == 3
        assert models.Task.objects.filter(status="RUNNING", worker_id=worker.id).count() == 7
    finally:
        producer.close()


def test_a_round_without_prepared_statements_for_poolers_that_cannot_keep_them() -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(3))
    worker = make_worker()
    producer = Producer(worker_id=worker.id, queues=["default"], prepare=False)
    try:
        _, rows = round_(producer, 10)
        statuses, _ = round_(producer, 10, [store.Success(row.id, row.attempts, "null") for row in rows])
        assert set(statuses.values()) == {"SUCCESSFUL"}
        assert producer.session.conn is not None
        assert producer.session.conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    finally:
        producer.close()


def round_(
    producer: Producer, limit: int, successes: list[store.Success] | None = None
) -> tuple[dict[int, str], list[store.TaskRow]]:
    done = producer.run_once(limit, successes or [])
    assert done is not None
    return done


def test_heartbeat_beats_and_notices_being_marked_lost(raw_conn: psycopg.Connection) -> None:
    worker = make_worker()
    lost = threading.Event()
    heartbeat = Heartbeat(worker.id, on_lost=lost.set)
    raw_conn.execute("UPDATE queueapp_worker SET last_heartbeat_at = now() - interval '1 hour'")
    assert heartbeat.run_once() is True
    assert models.Worker.objects.get(id=worker.id).last_heartbeat_at > worker.last_heartbeat_at
    raw_conn.execute("UPDATE queueapp_worker SET state = 'LOST'")
    assert heartbeat.run_once() is False
    assert lost.is_set()


def test_listener_wakes_on_its_queues_only_and_reconnects(raw_conn: psycopg.Connection) -> None:
    waiting_worker(["default"])  # enqueues on both queues notify: each names its one waiting worker
    worker = waiting_worker(["emails"])
    wake, stop = threading.Event(), threading.Event()
    views: list[store.FlowView] = []
    woken_with_view: list[bool] = []

    def seen(view: store.FlowView) -> None:
        woken_with_view.append(wake.is_set())
        views.append(view)

    hearer = WorkerHearer(worker_id=worker.id, queues=["emails"], wake=wake, on_settings=seen)
    listener = Listener(conninfo(), queues=["emails"], hearer=hearer, stop=stop, idle_check=60)
    try:
        listener.run_once(timeout=0.1)  # connects and LISTENs (and wakes: it may have missed something)
        assert wake.is_set()
        assert views == [store.FlowView(0, frozenset())]  # and tells the producer what it found
        wake.clear()
        tasks.add.enqueue(1, 1)  # queue 'default': not ours
        listener.run_once(timeout=0.5)
        assert not wake.is_set()
        tasks.send_email.enqueue("a@example.com")
        listener.run_once(timeout=5)
        assert wake.is_set()
        wake.clear()
        hearer.enqueued(store.Wake("emails", uuid.uuid4()))  # another worker's wake-up: not ours
        assert not wake.is_set()
        store.set_paused("emails", True)  # a flow-control change: the producer hears of it at once,
        listener.run_once(timeout=5)
        assert views[-1] == store.FlowView(0, frozenset({"emails"}))
        assert woken_with_view == [False, False]  # and is woken only once it has the new view
        assert wake.is_set()

        wake.clear()
        assert listener.conn is not None
        raw_conn.execute("SELECT pg_terminate_backend(%s)", [listener.conn.info.backend_pid])
        listener.run_once(timeout=1)  # notices the loss, wakes the producer to poll
        assert listener.conn is None
        assert wake.is_set()
        listener.run_once(timeout=0.1)
        assert listener.conn is not None
    finally:
        listener.close()


def test_a_listener_on_the_django_connection_hears_what_came_during_a_query_and_listens_again_after_a_close(
    raw_conn: psycopg.Connection,
) -> None:
    """A supervisor's: LISTEN on this thread's Django connection, which its housekeeping also uses."""
    worker = waiting_worker(["emails"])
    wake, stop = threading.Event(), threading.Event()
    hearer = WorkerHearer(worker_id=worker.id, queues=["emails"], wake=wake, on_settings=lambda view: None)
    listener = Listener(None, queues=["emails"], hearer=hearer, stop=stop, idle_check=60)
    try:
        listener.run_once(timeout=0.1)
        assert listener.conn is connection.connection
        wake.clear()
        with connection.cursor() as cursor:  # housekeeping's query; the notification comes meanwhile
            cursor.execute("SELECT pg_sleep(0.3)")
            raw_conn.execute("SELECT pg_notify('taskqueue', %s)", [f"emails {worker.id}"])
            cursor.execute("SELECT pg_sleep(0.3)")
        listener.run_once(timeout=0)  # heard from psycopg's backlog, without waiting
        assert wake.is_set()

        wake.clear()
        connection.close()  # as before a fork, or after housekeeping's connection error
        listener.run_once(timeout=0.1)  # LISTENs on the new connection, and wakes (it may have missed some)
        assert listener.conn is connection.connection
        assert wake.is_set()
        wake.clear()
        tasks.send_email.enqueue("a@example.com")
        listener.run_once(timeout=5)
        assert wake.is_set()
    finally:
        listener.close()
    assert connection.connection is None


def test_a_background_service_that_dies_reports_it_so_the_worker_stops() -> None:
    from workers.services import ServiceThread

    class Broken:
        name = "heartbeat"

        def run_once(self) -> None:
            raise RuntimeError("the heartbeat thread hit a bug")

    crashed: list[str] = []
    thread = ServiceThread(Broken(), interval=0.01, stop=threading.Event(), on_crash=crashed.append)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert crashed == ["heartbeat"]


def test_an_error_message_jsonb_cannot_hold_is_still_recorded() -> None:
    result = tasks.raises_unstorable_text.using(max_attempts=1).enqueue()
    worker = make_worker()
    (row,) = claim(worker)
    assert execute(worker, row) == "FAILED"
    (error,) = models.Task.objects.get(id=int(result.id)).errors
    assert error["message"] == "nul \\x00 and a lone surrogate \\ud800 in the message"


def test_statements_per_round_on_the_worker_hot_path_are_pinned() -> None:
    """Counts, not times: a round is one claim for all free slots (after the SET LOCAL that keeps its
    plan on the claim index) plus one fenced finish for every success since the last round, both
    prepared on the server; a failure is one statement, written by the task's thread. A change that
    adds a query per task shows here first."""
    from django.db import connection

    tasks.add.enqueue_many(((i, i), {}) for i in range(5))
    tasks.flaky.enqueue(1)
    worker = make_worker()
    producer = Producer(worker_id=worker.id, queues=["default"])
    executor = executor_for(worker)
    round_statements: list[str] = []
    task_thread_statements: list[str] = []

    class Counting(psycopg.Cursor[Any]):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            round_statements.append(str(query))
            return super().execute(query, params, **kwargs)

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        task_thread_statements.append(sql)
        return execute(sql, params, many, context)

    try:
        producer.session.conn = producer.session.connect()
        producer.settings_seen(producer.session.flow_view())  # as the listener does on connecting
        producer.session.conn.cursor_factory = Counting
        _, rows = round_(producer, 10)
        # BEGIN, the plan setting, the claim, COMMIT: one pipeline, one round trip.
        assert [round_statements[0], len(round_statements), round_statements[-1]] == ["BEGIN", 4, "COMMIT"]
        with connection.execute_wrapper(count):
            attempts = [executor.run(row) for row in rows]
        successes = [attempt.success for attempt in attempts if attempt.success]
        statuses, more = round_(producer, 10, successes)

        assert len(rows) == 6
        assert more == []
        assert list(statuses.values()) == ["SUCCESSFUL"] * 5
        assert [attempt.outcome for attempt in attempts if not attempt.success] == ["retry"]
        assert len(round_statements) == 4 + 5  # second round: one finish for five, setting, claim
        assert len(task_thread_statements) == 1  # the failure
        assert "queueapp_queuecontrol" not in task_thread_statements[0]  # pays nothing for breakers
        listed = producer.session.conn.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [text for (text,) in listed]
        assert sum("SKIP LOCKED" in text for text in prepared) == 1
        assert sum("DELETE FROM queueapp_task_live" in text for text in prepared) == 1  # the finish
    finally:
        producer.close()


def test_only_failures_of_a_queue_with_a_breaker_are_counted_for_it() -> None:
    """A failure is one statement (main's, with no look at the settings) unless the worker's flow
    view has a breaker on the task's queue: then the failure and its count, in one transaction."""
    from django.db import connection

    models.QueueControl.objects.create(name="emails", breaker_threshold=0.5)
    tasks.flaky.enqueue(1)
    tasks.flaky.using(queue_name="emails").enqueue(2)
    worker = make_worker(["default", "emails"])
    producer = Producer(worker_id=worker.id, queues=["default", "emails"])
    statements: dict[str, list[str]] = {}

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.setdefault(queue, []).append(sql)
        return execute(sql, params, many, context)

    try:
        producer.settings_seen(producer.session.flow_view())
        executor = Executor(
            worker_id=worker.id,
            backend=task_backends["default"],
            give_up=threading.Event(),
            breakers=producer.breakers,
        )
        _, rows = round_(producer, 2)
        assert sorted(row.queue_name for row in rows) == ["default", "emails"]
        for row in rows:
            queue = row.queue_name
            with connection.execute_wrapper(count):
                assert executor.run(row).outcome == "retry"
    finally:
        producer.close()
    assert len(statements["default"]) == 1
    assert len(statements["emails"]) == 2
    assert list(models.BreakerEvent.objects.values_list("queue_name", "failed")) == [("emails", True)]


def test_after_a_round_whose_answer_was_lost_its_claims_are_released_and_its_successes_known() -> None:
    """A round's COMMIT can go through while its answer is lost (the server restarting, the network
    cut). Its claims would stay RUNNING under a live worker that never heard of them, which no
    reaper takes back; its successes would be sent again and look taken away."""
    from workers.config import WorkerConfig
    from workers.worker import Worker

    tasks.add.enqueue_many(((i, i), {}) for i in range(6))
    worker = Worker(WorkerConfig.from_settings(concurrency=2))
    worker.register()
    try:
        assert worker.round(claim=True) == 2
        first, second = (worker.inbox.get_nowait() for _ in range(2))
        done = worker.executor.run(first)
        assert done.success is not None
        worker.ledger.succeeded.append(done)

        # The lost round: it records `first` and claims one more, then its answer never arrives.
        assert worker.producer.session.round([done.success], 1) is not None
        worker.completer.uncertain = True

        assert worker.round(claim=True) == 1  # reconciles first, then a normal round
        assert done.outcome == "SUCCESSFUL"
        assert not worker.completer.uncertain
        running = models.Task.objects.filter(status="RUNNING", worker_id=worker.id)
        assert sorted(running.values_list("id", flat=True)) == sorted(worker.ledger.held)
        assert second.id in worker.ledger.held
        assert models.Task.objects.get(id=first.id).status == "SUCCESSFUL"
        assert set(models.Task.objects.filter(status="READY").values_list("attempts", flat=True)) == {0}
    finally:
        worker.producer.close()


@pytest.mark.parametrize(
    ("task_args", "claims_ahead"),
    [((0.0, "quick"), True), ((0.3, "slow"), False)],
    ids=["short tasks are claimed ahead", "long tasks are not"],
)
def test_a_worker_claims_ahead_of_its_threads_only_while_tasks_are_short(
    task_args: tuple[float, str], claims_ahead: bool
) -> None:
    """Concurrency 2, prefetch 3: the first round claims 2 (run times unknown yet); once those ran,
    the next claims up to 2 + 3 when they were short, and only the 2 free threads when they ran
    longer than the threads could get through in CLAIM_AHEAD_WINDOW."""
    from workers.config import WorkerConfig
    from workers.worker import Worker

    tasks.sleep_then_return.enqueue_many([(task_args, {})] * 20)
    worker = Worker(WorkerConfig.from_settings(concurrency=2, prefetch=3))
    worker.register()
    for thread in worker.threads:
        thread.start()
    try:
        assert worker.round(claim=True) == 2
        wait_for(lambda: len(worker.ledger.succeeded) == 2, timeout=10, message="the first two tasks to run")
        claimed = worker.round(claim=True)
        assert claimed == (5 if claims_ahead else 2)
        running = models.Task.objects.filter(status="RUNNING", worker_id=worker.id).count()
        assert running == claimed  # claimed ahead or not, every one is held RUNNING under this worker
    finally:
        for _ in worker.threads:
            worker.inbox.put(None)
        worker.producer.close()


def test_a_beat_that_reaches_the_database_renews_the_lease_and_one_refused_does_not(
    raw_conn: psycopg.Connection,
) -> None:
    worker = make_worker()
    lease = Lease(duration=60, on_expired=lambda: None)
    heartbeat = Heartbeat(worker.id, on_lost=lambda: None, lease=lease)
    before = lease.renewed_at
    assert heartbeat.run_once() is True
    renewed = lease.renewed_at
    assert renewed > before
    raw_conn.execute("UPDATE queueapp_worker SET state = 'LOST'")
    assert heartbeat.run_once() is False
    assert lease.renewed_at == renewed


def test_a_lease_not_renewed_in_time_expires_once_and_for_good() -> None:
    expired: list[bool] = []
    lease = Lease(duration=0.2, on_expired=lambda: expired.append(True))
    assert lease.run_once() is True
    wait_for(lambda: not lease.run_once(), timeout=5, message="the lease to run out")
    lease.renew(time.monotonic())  # a beat that got through after all comes too late
    assert lease.run_once() is False
    assert expired == [True]


def test_the_lease_thread_looks_when_the_lease_would_run_out_not_on_a_timer() -> None:
    """An idle worker's lease thread woke twice a second to find nothing changed; it now sleeps until
    the lease would end, and a renewal meanwhile only sends it back to sleep."""
    expired: list[bool] = []
    lease = Lease(duration=0.6, on_expired=lambda: expired.append(True))
    stop = threading.Event()
    looks: list[float] = []

    class Counted:
        name = "lease"

        def run_once(self) -> bool:
            looks.append(time.monotonic())
            return lease.run_once()

    thread = ServiceThread(Counted(), interval=lease.next_check_in, stop=stop, on_crash=lambda name: None)
    thread.start()
    try:
        assert 0.5 < lease.next_check_in() <= 0.6
        wait_for(lambda: expired, timeout=5, message="the lease to run out")
        assert len(looks) <= 3  # at the start and once due (a wait may end a hair early: one more)
        assert lease.next_check_in() == 0.6  # run out: no spinning on a past deadline
    finally:
        stop.set()
        thread.join(5)


def test_a_written_off_worker_asks_its_running_tasks_to_stop_without_the_database() -> None:
    worker = make_worker()
    tasks.wait_for_cancel.enqueue()
    (row,) = claim(worker)
    cancellation.stop_all.set()  # what Worker.lease_expired does
    try:
        attempt = executor_for(worker).run(row)
    finally:
        cancellation.stop_all.clear()
    assert attempt.success is not None
    assert json.loads(attempt.success.return_value_json) == "stopped early"


def test_the_error_policy_tries_again_only_what_a_fresh_connection_may_cure(
    raw_conn: psycopg.Connection,
) -> None:
    """One policy for every worker thread: a broken connection gives None (and the next call a fresh
    connection); an error that would come back the same (a data error) propagates."""
    from django.db import DataError, connection

    worker = make_worker()
    connection.ensure_connection()
    raw_conn.execute("SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid])
    assert db.unless_unreachable(lambda: store.beat_worker(worker.id), "test_beat_failed") is None
    assert db.unless_unreachable(lambda: store.beat_worker(worker.id), "test_beat_failed") is True

    def divide_by_zero() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")

    with pytest.raises(DataError):
        db.unless_unreachable(divide_by_zero, "test_failed")


def test_without_a_listener_the_producer_looks_at_the_flow_settings_itself() -> None:
    """TASKQUEUE["NOTIFY"] off: no listener hands the producer a new flow view, so it looks itself
    (look_every): else the epoch fence would keep its plain claim from claiming after any change."""
    tasks.add.enqueue_many(((i, i), {}) for i in range(3))
    worker = make_worker()
    producer = Producer(worker_id=worker.id, queues=["default"])
    producer.look_every = 0
    try:
        assert len(round_(producer, 1)[1]) == 1
        store.set_paused("default", True)
        assert round_(producer, 1)[1] == []
        store.set_paused("default", False)
        assert len(round_(producer, 1)[1]) == 1
    finally:
        producer.close()


def test_a_claim_this_worker_holds_already_is_not_run_twice_and_one_of_another_attempt_handed_back() -> None:
    """A database crash undid a claim (a round that only claims does not wait for a flush) and the
    worker still running that task claims it again: of the same attempt, it is the claim of the run
    under way (nothing starts twice, and ledger entries are not overwritten); of another attempt
    (the task ran and failed elsewhere meanwhile), it is handed back."""
    tasks.add.enqueue(1, 2)
    (row,) = claim(make_worker())
    ledger = Ledger(concurrency=4, prefetch_max=0, max_tasks=None)
    assert ledger.claimed([row]) == ([row], [])
    assert ledger.claimed([row]) == ([], [])
    later = row._replace(attempts=row.attempts + 1)
    assert ledger.claimed([later]) == ([], [later])
    assert ledger.held == {row.id: row}


def test_a_producer_that_does_not_look_first_claims_at_once_and_looks_after_the_round() -> None:
    """A supervised child's backstop look at the flow settings must not delay the claim of a
    wake-up: it claims with the view it has (a stale one claims nothing of a queue paused since: the
    epoch fence) and looks after the round (look_if_due)."""
    tasks.add.enqueue_many(((i, i), {}) for i in range(3))
    worker = make_worker()
    producer = Producer(worker_id=worker.id, queues=["default"])
    producer.look_every = 0
    producer.look_first = False
    try:
        assert len(round_(producer, 1)[1]) == 1  # its first round looks first all the same: no view yet
        looked = producer.looked_at
        store.set_paused("default", True)
        assert round_(producer, 1)[1] == []  # claimed with the old view, without looking: fenced
        assert producer.looked_at == looked
        producer.look_if_due()
        assert producer.view is not None
        assert producer.view.queues == frozenset({"default"})
        store.set_paused("default", False)
        producer.look_if_due()
        assert len(round_(producer, 1)[1]) == 1
    finally:
        producer.close()
