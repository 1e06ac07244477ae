"""Notify only when someone waits: enqueues NOTIFY a queue only while a worker waits on it, a worker
marks itself waiting only when no enqueue on its queues is under way, and TASKQUEUE["NOTIFY"] off
turns notifications off entirely."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from django.tasks import default_task_backend
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from queueapp import models, store
from queueapp.states import WorkerState
from tests import tasks
from tests.conftest import collect_until_sentinel, conninfo, make_worker, waiting_worker, wakes_until_sentinel
from tests.helpers import Counting, WorkerProcess, wait_for
from tests.settings import TASKQUEUE
from workers import wakeups
from workers.housekeeper import Housekeeping, Housekept
from workers.producer import Producer
from workers.services import ServiceThread
from workers.waiting import RETRY_FIRST, RETRY_MOST, Waiting

pytestmark = pytest.mark.django_db(transaction=True)

NOTIFY_OFF: dict[str, Any] = {**TASKQUEUE, "NOTIFY": False}


ERROR = {"exception_class_path": "builtins.RuntimeError", "message": "boom", "traceback": ""}


@pytest.fixture
def bare_listener(transactional_db: None) -> Any:
    """LISTENing, with no worker waiting (unlike the listener fixture)."""
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute("LISTEN taskqueue")
        yield conn


def enqueue_every_way(raw_conn: psycopg.Connection) -> None:
    """One task, a bulk of 20 (COPY), a due deferred task staged, a task enqueued and, once failed,
    retried: five transactions that make tasks READY on the default queue."""
    tasks.add.enqueue(1, 1)
    tasks.add.enqueue_many(((i, i), {}) for i in range(20))
    deferred = int(tasks.add.using(run_after=timezone.now() + dt.timedelta(hours=1)).enqueue(2, 2).id)
    raw_conn.execute(
        "UPDATE queueapp_task_live SET run_after = now() - interval '1 second' WHERE id = %s", [deferred]
    )
    assert store.stage_tasks(limit=10) == {"default": 1}
    failed = tasks.add.using(max_attempts=1).enqueue(3, 3)
    worker = make_worker(["elsewhere"])
    store.claim_tasks(worker_id=worker.id, queues=["default"], limit=100)
    store.fail_task(
        task_id=int(failed.id), worker_id=worker.id, attempt=1, error=ERROR, backoff_base=0, backoff_max=0
    )
    assert default_task_backend.retry(failed.id) is True


def test_no_waiting_worker_no_notification(
    bare_listener: psycopg.Connection, raw_conn: psycopg.Connection
) -> None:
    enqueue_every_way(raw_conn)
    assert collect_until_sentinel(bare_listener, raw_conn) == []


def test_only_the_queues_an_alive_worker_waits_on_are_notified(
    bare_listener: psycopg.Connection, raw_conn: psycopg.Connection
) -> None:
    worker = waiting_worker(["emails"])
    tasks.add.enqueue(1, 1)
    tasks.send_email.enqueue("a@example.com")
    assert collect_until_sentinel(bare_listener, raw_conn) == ["emails"]

    models.Worker.objects.filter(id=worker.id).update(state=WorkerState.STOPPING)
    tasks.send_email.enqueue("b@example.com")
    assert collect_until_sentinel(bare_listener, raw_conn) == []


def test_notify_off_sends_nothing_even_to_a_waiting_worker(
    listener: psycopg.Connection, raw_conn: psycopg.Connection
) -> None:
    with override_settings(TASKQUEUE=NOTIFY_OFF):
        enqueue_every_way(raw_conn)
    assert collect_until_sentinel(listener, raw_conn) == []
    enqueue_every_way(raw_conn)  # on again: each of the five notifies
    assert collect_until_sentinel(listener, raw_conn) == ["default"] * 5


def test_a_worker_cannot_mark_itself_waiting_while_an_enqueue_on_its_queue_is_under_way() -> None:
    """The enqueue holds its queue's wake lock until it commits: a mark made meanwhile could commit
    before the enqueue reads the marks (no NOTIFY) and its claim come before the task commits."""
    default = store.WorkerSession(worker_id=make_worker(["default"]).id, queues=["default"])
    emails = store.WorkerSession(worker_id=make_worker(["emails", "other"]).id, queues=["emails", "other"])
    try:
        with transaction.atomic():
            tasks.add.enqueue(1, 1)
            assert default.set_waiting(True) is False
            assert emails.set_waiting(True) is True  # another queue: not held back
        assert default.set_waiting(True) is True
        assert set(models.Worker.objects.filter(waiting=True).values_list("id", flat=True)) == {
            default.worker_id,
            emails.worker_id,
        }
    finally:
        default.close()
        emails.close()


def worker_row_version(worker_id: uuid.UUID) -> tuple[bool, str]:
    """(waiting, xmin): xmin changes with every write to the row."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT waiting, xmin::text FROM queueapp_worker WHERE id = %s", [worker_id])
        waiting, xmin = cursor.fetchone()
    return waiting, xmin


def test_waiting_writes_the_mark_on_changes_only_and_claims_once_more_after_marking() -> None:
    worker = make_worker(["default"])
    producer = Producer(worker_id=worker.id, queues=["default"])
    waiting = Waiting(producer, enabled=True, poll_interval=1.0)
    try:
        assert waiting.after_round(free_slots=0) is None  # busy, never marked: nothing written
        assert worker_row_version(worker.id)[0] is False
        before = worker_row_version(worker.id)

        assert waiting.after_round(free_slots=2) == 0.0  # marked: claim once more at once
        marked = worker_row_version(worker.id)
        assert marked[0] is True
        assert marked != before
        assert waiting.after_round(free_slots=2) is None  # still waiting: the poll, no write
        assert worker_row_version(worker.id) == marked

        assert waiting.after_round(free_slots=0) is None  # busy: cleared
        assert worker_row_version(worker.id)[0] is False
        cleared = worker_row_version(worker.id)
        assert waiting.after_round(free_slots=0) is None
        assert worker_row_version(worker.id) == cleared
    finally:
        producer.close()


def test_waiting_held_back_by_an_enqueue_claims_again_soon_then_less_often() -> None:
    worker = make_worker(["default"])
    producer = Producer(worker_id=worker.id, queues=["default"])
    waiting = Waiting(producer, enabled=True, poll_interval=0.02)
    try:
        with transaction.atomic():
            tasks.add.enqueue(1, 1)
            delays = [waiting.after_round(free_slots=1) for _ in range(4)]
        assert delays == [RETRY_FIRST, RETRY_FIRST * 2, 0.02, 0.02]
        assert worker_row_version(worker.id)[0] is False
        assert waiting.after_round(free_slots=1) == 0.0
        assert worker_row_version(worker.id)[0] is True
        assert Waiting(producer, enabled=False, poll_interval=1.0).after_round(free_slots=0) is None
        assert worker_row_version(worker.id)[0] is True  # off: never touches the mark
    finally:
        producer.close()


RACE_POLL_INTERVAL = 5.0
"""The race test's --poll-interval: jittered, a poll comes at least 4 s after the one before."""
RACES = 1000


@pytest.mark.slow
def test_an_enqueue_raced_against_a_worker_going_idle_1000_times_never_waits_for_the_poll(
    workers: Callable[..., WorkerProcess], raw_conn: psycopg.Connection
) -> None:
    """Each task is enqueued a random 0-3 ms after the one before started: while the worker records
    it, finds nothing, marks itself waiting and claims once more. A wake-up lost there leaves the
    task to the poll, 4 s or more away; every task must start well before that."""
    # No claim-ahead: with it a worker of short tasks keeps a free slot, and so its mark, throughout.
    worker = workers("--concurrency", "1", "--prefetch", "0", "--poll-interval", str(RACE_POLL_INTERVAL))
    deadline = RACE_POLL_INTERVAL * 0.8
    first = int(tasks.add.enqueue(0, 0).id)
    wait_for(lambda: started(raw_conn, first), timeout=30, message="the worker's first task")
    rng = random.Random(15)
    for race in range(RACES):
        pause_until = time.monotonic() + rng.uniform(0, 0.003)
        while time.monotonic() < pause_until:  # a busy wait: sleep() is far coarser than a race
            pass
        task_id = int(tasks.add.enqueue(race, race).id)
        wait_for(
            functools.partial(started, raw_conn, task_id),
            timeout=deadline,
            interval=0.0005,
            message=f"race {race}: task {task_id} to start before the worker's poll",
        )
    slowest = raw_conn.execute(
        "SELECT max(started_at - enqueued_at) FROM queueapp_task WHERE id > %s", [first]
    ).fetchone()[0]
    assert slowest < dt.timedelta(seconds=deadline)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()


def started(raw_conn: psycopg.Connection, task_id: int) -> bool:
    row = raw_conn.execute(
        "SELECT started_at IS NOT NULL FROM queueapp_task WHERE id = %s", [task_id]
    ).fetchone()
    return bool(row and row[0])


@pytest.mark.slow
def test_a_worker_with_notify_off_neither_listens_nor_marks_itself_and_polls(
    workers: Callable[..., WorkerProcess], raw_conn: psycopg.Connection
) -> None:
    worker = workers("--poll-interval", "0.2", env={"TASKQUEUE_NOTIFY": "off"})
    first = int(tasks.add.enqueue(1, 1).id)
    wait_for(lambda: started(raw_conn, first), timeout=30, message="the polling worker's first task")
    polled = int(tasks.add.enqueue(2, 2).id)
    wait_for(lambda: started(raw_conn, polled), timeout=5, message="the next poll to claim the task")
    listening = raw_conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE query = 'LISTEN taskqueue' AND datname = current_database()"
    ).fetchone()
    assert listening == (0,)
    assert not models.Worker.objects.filter(waiting=True).exists()
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()


def test_a_mark_whose_clearing_failed_is_written_again_when_the_worker_is_idle(
    raw_conn: psycopg.Connection,
) -> None:
    """A clear whose answer was lost (it committed, or not): the worker must not go on believing it
    is marked, or no enqueue would ever notify it again and every idle pickup would wait for the poll."""
    worker = make_worker(["default"])
    producer = Producer(worker_id=worker.id, queues=["default"])
    waiting = Waiting(producer, enabled=True, poll_interval=1.0)
    try:
        assert waiting.after_round(free_slots=1) == 0.0  # marked
        # The clear commits but its answer never arrives: the row says not waiting, the session is gone.
        raw_conn.execute("UPDATE queueapp_worker SET waiting = false WHERE id = %s", [worker.id])
        assert producer.session.conn is not None
        pid = producer.session.conn.info.backend_pid
        raw_conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        assert waiting.after_round(free_slots=0) is None
        assert waiting.after_round(free_slots=1) == 0.0  # idle again: marked again
        assert worker_row_version(worker.id)[0] is True
    finally:
        producer.close()


def test_a_mark_held_back_by_a_long_transaction_is_tried_again_within_a_quarter_second() -> None:
    """Not at the poll interval: meanwhile enqueues on the worker's other queues do not notify it."""
    worker = make_worker(["default", "emails"])
    producer = Producer(worker_id=worker.id, queues=["default", "emails"])
    waiting = Waiting(producer, enabled=True, poll_interval=5.0)
    try:
        with transaction.atomic():
            tasks.add.enqueue(1, 1)
            delays = [waiting.after_round(free_slots=1) for _ in range(12)]
        assert delays[0] == RETRY_FIRST
        assert max(d for d in delays if d is not None) == RETRY_MOST
    finally:
        producer.close()


def named_in_notifications(listener: psycopg.Connection, raw_conn: psycopg.Connection) -> list[str]:
    """The workers named by the notifications before a sentinel sent now."""
    return [str(wake.named) for wake in wakes_until_sentinel(listener, raw_conn)]


def test_a_task_names_one_waiting_worker_and_a_batch_as_many_as_it_has_tasks(
    bare_listener: psycopg.Connection, raw_conn: psycopg.Connection
) -> None:
    """Wake one, not all: only the named worker claims (a supervisor's child, or a lone listener)."""
    waiters = {waiting_worker(["default"]).id for _ in range(3)}
    make_worker(["default"])  # busy: never named
    tasks.add.enqueue(1, 1)
    (named,) = named_in_notifications(bare_listener, raw_conn)
    assert named in map(str, waiters)
    tasks.add.enqueue_many(((i, i), {}) for i in range(20))  # by COPY: one call for the batch's 20
    assert sorted(named_in_notifications(bare_listener, raw_conn)) == sorted(map(str, waiters))
    busy = waiters.pop()
    models.Worker.objects.filter(id=busy).update(waiting=False)
    tasks.add.enqueue_many(((i, i), {}) for i in range(12))
    assert sorted(named_in_notifications(bare_listener, raw_conn)) == sorted(map(str, waiters))


def test_a_wake_up_goes_to_the_named_workers_listener_channel_and_to_the_shared_one_without(
    bare_listener: psycopg.Connection, raw_conn: psycopg.Connection
) -> None:
    """A supervisor hears only the wake-ups naming its own children: 19 of 20 supervisors no longer
    wake for each task. A row without a channel (a worker of a version before migration 0015) is
    named on the shared channel, which every listener hears."""
    supervisor = uuid.uuid4()
    channel = store.wake_channel(supervisor)
    assert channel == f"taskqueue_{supervisor.hex}"
    child = waiting_worker(["default"])
    models.Worker.objects.filter(id=child.id).update(wake_channel=channel)
    with psycopg.connect(conninfo(), autocommit=True) as own:
        own.execute(f"LISTEN {channel}")
        tasks.add.enqueue(1, 1)
        heard = [(n.channel, n.payload) for n in own.notifies(timeout=10, stop_after=1)]
        assert heard == [(channel, f"default {child.id}")]
        assert named_in_notifications(bare_listener, raw_conn) == []  # not on the shared channel
        models.Worker.objects.filter(id=child.id).update(wake_channel=None)
        tasks.add.enqueue(2, 2)
        assert named_in_notifications(bare_listener, raw_conn) == [str(child.id)]


def test_the_supervisors_poll_wakes_an_idle_child_per_ready_task_and_asks_nothing_when_all_busy(
    raw_conn: psycopg.Connection,
) -> None:
    lines = {uuid.uuid4(): socket.socketpair() for _ in range(3)}
    ours = {worker: wakeups.ChildLine(pair[0]) for worker, pair in lines.items()}
    missed: list[bool] = []
    dispatcher = wakeups.Dispatcher(lambda: ours, queues=["default"], on_missed=lambda: missed.append(True))
    poll = wakeups.ChildPoll(dispatcher)

    def woken() -> set[uuid.UUID]:
        heard = set()
        for worker, (_, theirs) in lines.items():
            theirs.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                if wakeups.WAKE in theirs.recv(64):
                    heard.add(worker)
        return heard

    with CaptureQueriesContext(connection) as queries:
        assert poll.run_once() == 0  # nobody said it waits: no question asked
    assert len(queries) == 0
    first, second, _ = lines
    lines[first][1].send(wakeups.IDLE)
    lines[second][1].send(wakeups.IDLE)
    assert poll.run_once() == 0  # nothing READY: nobody woken
    tasks.add.using(queue_name="emails").enqueue(1, 2)
    assert poll.run_once() == 0  # READY on a queue of somebody else's
    assert woken() == set()
    tasks.add.enqueue(1, 2)
    assert poll.run_once() == 1
    (one,) = woken()
    assert one in (first, second)
    lines[one][1].send(wakeups.BUSY)  # it claimed (the supervisor took it for busy meanwhile anyway)
    assert poll.run_once() == 1  # the task is still READY: the other waiting child is woken
    assert woken() == {second if one == first else first}
    with CaptureQueriesContext(connection) as queries:
        assert poll.run_once() == 0  # both taken for busy until they say otherwise
    assert len(queries) == 0

    lines[first][1].send(wakeups.IDLE)
    lines[second][1].send(wakeups.IDLE)
    tasks.add.enqueue(3, 4)
    tasks.add.enqueue(5, 6)
    assert poll.run_once() == 2  # three READY, two waiting: both woken, each claims
    assert woken() == {first, second}
    dispatcher.missed()  # the listener reconnected: the supervisor is asked to poll now
    assert missed == [True]
    assert woken() == set()  # and nobody is woken blindly

    lines[first][1].send(wakeups.IDLE)
    lines[second][1].send(wakeups.IDLE)
    store.set_paused("default", True)  # the three READY tasks are held back now
    dispatcher.settings_changed(raw_conn)  # as the listener hears of it (and tells every child: LOOK)
    assert dispatcher.flow_queues == frozenset({"default"})
    woken()  # the LOOKs read
    lines[first][1].send(wakeups.IDLE)
    lines[second][1].send(wakeups.IDLE)
    assert poll.run_once() == 1  # one child looks, not one per held-back task
    for mine, theirs in lines.values():
        mine.close()
        theirs.close()


def test_the_supervisors_poll_and_its_try_for_the_housekeeping_row_are_one_statement_when_both_are_due() -> (
    None
):
    """An idle supervisor's only statement every poll interval: its count for its waiting children
    comes with its try for the housekeeping row (the stager after it finds the row tried)."""
    first, second = socket.socketpair()
    child = uuid.uuid4()
    dispatcher = wakeups.Dispatcher(
        lambda: {child: wakeups.ChildLine(first)}, queues=["default"], on_missed=lambda: None
    )
    housekeeping = Housekeeping(uuid.uuid4(), try_every=60)
    poll = wakeups.ChildPoll(dispatcher, housekeeping)
    stager = Housekept(Counting(), housekeeping)
    tasks.add.enqueue(1, 2)
    second.send(wakeups.IDLE)
    with CaptureQueriesContext(connection) as queries:
        assert poll.run_once() == 1  # one READY task: the waiting child woken
        stager.run_once()
    assert len(queries) == 1, [q["sql"] for q in queries]
    assert "queueapp_housekeeper" in queries[0]["sql"]
    assert housekeeping.held()  # the try took the row (no statement: tried just now)
    second.send(wakeups.IDLE)
    with CaptureQueriesContext(connection) as queries:
        assert poll.run_once() == 1  # no try due: the count alone
    assert len(queries) == 1
    assert "queueapp_housekeeper" not in queries[0]["sql"]
    first.close()
    second.close()


def test_a_childs_line_thread_waits_for_its_supervisors_word_and_ends_at_once_when_the_child_stops() -> None:
    """It no longer wakes every second to look for the stop: stop_hearing ends its wait."""
    theirs, ours = socket.socketpair()
    wake, look, stop = threading.Event(), threading.Event(), threading.Event()
    line = wakeups.SupervisorLine(ours, wake=wake, look=look, stop=stop)
    thread = ServiceThread(line, interval=0, stop=stop, on_crash=lambda name: None)
    thread.start()
    try:
        theirs.send(wakeups.WAKE)
        wait_for(wake.is_set, timeout=5, message="the wake-up to get through")
        stop.set()
        line.stop_hearing()
        thread.join(5)
        assert not thread.is_alive(), "the line's thread waited on for the supervisor after the stop"
        line.tell(idle=True)  # telling the supervisor still works
        assert theirs.recv(16) == wakeups.IDLE
    finally:
        stop.set()
        line.stop_hearing()
        thread.join(5)
        line.close()
        theirs.close()
