"""One housekeeper per database (workers.housekeeper): the process holding the housekeeping row runs
the stager and the scheduler; the others take it over when it expires or is given up. Real worker
processes and real signals for the hand-overs."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from queueapp import models, store
from tests import tasks
from tests.helpers import Counting, WorkerProcess, wait_for
from workers.housekeeper import TTL, Housekeeping, Housekept, for_services
from workers.services import Rotation

pytestmark = pytest.mark.django_db(transaction=True)

Start = Callable[..., WorkerProcess]


def holder() -> uuid.UUID | None:
    row = models.Housekeeper.objects.filter(role=store.HOUSEKEEPING).first()
    return row.holder if row else None


def expire(raw_conn: psycopg.Connection) -> None:
    """Its holder is gone: the row's time ran out (on the database's clock)."""
    raw_conn.execute("UPDATE queueapp_housekeeper SET expires_at = now() - interval '1 second'")


def test_one_process_holds_the_row_and_renews_it_while_the_other_waits() -> None:
    first, second = Housekeeping(uuid.uuid4(), try_every=0), Housekeeping(uuid.uuid4(), try_every=0)
    assert first.held()
    taken = models.Housekeeper.objects.get(role=store.HOUSEKEEPING)
    assert not second.held()
    assert first.held()  # renewed: later expiry, same taking
    renewed = models.Housekeeper.objects.get(role=store.HOUSEKEEPING)
    assert (renewed.holder, renewed.taken_at) == (first.holder, taken.taken_at)
    assert renewed.expires_at > taken.expires_at


def test_a_row_taken_for_services_run_less_often_than_its_time_lasts_until_after_their_next_run() -> None:
    """With STAGE_INTERVAL and SCHEDULE_INTERVAL of 6 s, the holder renewed a 5 s row every 6 s: it
    lapsed between two runs, and processes took it from each other in turn."""
    assert for_services(uuid.uuid4(), 6.0, 6.0).held()
    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM expires_at - now())::float8 FROM queueapp_housekeeper")
        (lasts,) = cursor.fetchone()
    assert 11 < lasts <= 12  # twice the services' interval: renewed at their next run with time to spare
    assert for_services(uuid.uuid4(), 1.0, 6.0).ttl == TTL  # one that runs often keeps the 5 s row


def test_a_try_for_a_row_another_process_holds_writes_nothing(raw_conn: psycopg.Connection) -> None:
    """Not even a row lock (a write: every process's try would commit with a WAL flush)."""
    first, second = Housekeeping(uuid.uuid4(), try_every=0), Housekeeping(uuid.uuid4(), try_every=0)
    assert first.held()
    locked_by = "SELECT xmax FROM queueapp_housekeeper"
    (before,) = raw_conn.execute(locked_by).fetchone()
    assert not second.held()
    assert raw_conn.execute(locked_by).fetchone() == (before,)
    expire(raw_conn)
    assert second.held()  # an expired row is still taken over


def test_a_try_can_count_ready_tasks_in_the_same_statement() -> None:
    for n in range(3):
        tasks.add.enqueue(n, n)
    tasks.add.using(queue_name="emails").enqueue(1, 1)
    first, second = Housekeeping(uuid.uuid4(), try_every=0), Housekeeping(uuid.uuid4(), try_every=0)
    assert first.try_counting(["default"], cap=2) == 2  # counted up to cap, and the row taken
    assert holder() == first.holder
    assert second.try_counting(["default", "emails"], cap=10) == 4  # held elsewhere: counted all the same
    assert holder() == first.holder
    assert first.try_counting([], cap=5) == 0  # nothing asked: nothing counted


def test_only_the_holder_runs_its_services() -> None:
    first, second = Housekeeping(uuid.uuid4(), try_every=0), Housekeeping(uuid.uuid4(), try_every=0)
    ours, theirs = Counting(), Counting()
    assert Housekept(ours, first).run_once() == 1
    assert Housekept(theirs, second).run_once() is None
    assert (ours.runs, theirs.runs) == (1, 0)


def test_a_rotation_waits_for_a_housekept_service_until_the_next_try_while_another_holds_the_row() -> None:
    """A supervisor that does not hold the row wakes for its stager and scheduler at each try for the
    row, not at their interval (each wake-up costs CPU); while it holds the row, at their interval."""
    first, second = Housekeeping(uuid.uuid4(), try_every=0), Housekeeping(uuid.uuid4(), try_every=600)
    assert first.held()
    theirs = Counting()
    rotation = Rotation([(Housekept(theirs, second), 1.0)], slack=0)
    assert rotation.run_due() > 500  # not held: back at the next try, ten minutes away
    assert theirs.runs == 0
    first.give_up()
    ours = Counting()
    rotation = Rotation([(Housekept(ours, Housekeeping(uuid.uuid4(), try_every=600)), 1.0)], slack=0)
    assert rotation.run_due() <= 1.0  # held: back at its interval
    assert ours.runs == 1


def test_a_try_for_the_row_comes_with_another_service_within_the_slack(raw_conn: psycopg.Connection) -> None:
    """A supervisor's stager runs early with its poll for the children: the try for the row comes
    with it, not at a wake-up of its own (nor a stage interval late)."""
    first, second = Housekeeping(uuid.uuid4(), try_every=0), Housekeeping(uuid.uuid4(), try_every=600)
    assert first.held()
    assert not second.held()  # next try in ten minutes
    expire(raw_conn)  # its holder died
    second.next_try = time.monotonic() + 0.4
    poll, stager = Counting(), Counting()
    rotation = Rotation([(poll, 2.0), (Housekept(stager, second), 1.0)], slack=0.5)
    rotation.due = [time.monotonic() - 0.1, second.next_try]
    rotation.run_due()
    assert holder() == second.holder  # tried early, with the poll: taken
    assert (poll.runs, stager.runs) == (1, 1)


def test_a_rotation_runs_services_due_within_its_slack_with_the_one_due_now() -> None:
    now, later = Counting(), Counting()
    rotation = Rotation([(now, 10.0), (later, 10.0)], slack=0.5)
    rotation.due = [time.monotonic() - 1, time.monotonic() + 0.4]
    rotation.run_due()
    assert (now.runs, later.runs) == (1, 1)  # one wake-up for both
    rotation.due = [time.monotonic() - 1, time.monotonic() + 5]
    assert rotation.run_due() == pytest.approx(5, abs=0.5)
    assert (now.runs, later.runs) == (2, 1)


def test_between_tries_the_answer_is_the_last_one_without_a_statement() -> None:
    first = Housekeeping(uuid.uuid4(), try_every=3600)
    assert first.held()
    models.Housekeeper.objects.all().delete()
    assert first.held()  # not asked again within try_every
    second = Housekeeping(uuid.uuid4(), try_every=3600)
    assert second.held()  # the row was free: taken
    assert holder() == second.holder


def test_a_given_up_row_is_taken_at_the_next_try() -> None:
    first, second = Housekeeping(uuid.uuid4(), try_every=0), Housekeeping(uuid.uuid4(), try_every=0)
    assert first.held()
    first.give_up()
    assert holder() is None
    assert second.held()
    assert not first.held()
    second.give_up()
    first.give_up()  # holds nothing: no statement, nothing deleted
    assert holder() is None


def test_an_expired_row_is_taken_over_and_its_old_holder_says_it_lost_it(
    raw_conn: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = Housekeeping(uuid.uuid4(), try_every=0), Housekeeping(uuid.uuid4(), try_every=0)
    assert first.held()
    expire(raw_conn)
    with caplog.at_level(logging.INFO, logger="workers.housekeeper"):
        assert second.held()
        assert not first.held()
    assert holder() == second.holder
    assert f"housekeeping_taken holder={second.holder}" in caplog.text
    assert f"housekeeping_lost holder={first.holder}" in caplog.text


def test_a_holder_cut_off_from_the_database_keeps_its_role_until_its_time_runs_out(
    raw_conn: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A try that fails for want of the database changes nothing: what was held is held until it
    expires (on the database, another process may take it only then), and the next try renews it."""
    first = Housekeeping(uuid.uuid4(), try_every=0)
    assert first.held()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    raw_conn.execute("SELECT pg_terminate_backend(%s)", [backend])
    with caplog.at_level(logging.WARNING, logger="workers.db"):
        assert first.held()
    assert f"housekeeping_try_failed holder={first.holder}" in caplog.text
    assert first.held()  # a fresh connection: renewed
    assert holder() == first.holder


def deferred_task(seconds: float) -> int:
    return int(tasks.add.using(run_after=timezone.now() + dt.timedelta(seconds=seconds)).enqueue(1, 1).id)


def finished(task_id: int) -> bool:
    return models.Task.objects.filter(id=task_id, status="SUCCESSFUL").exists()


@pytest.mark.slow
def test_a_killed_housekeepers_row_passes_to_another_worker_that_stages_from_then_on(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    started = [workers("--concurrency", "1", "--poll-interval", "1") for _ in range(2)]
    wait_for(
        lambda: models.Worker.objects.filter(state="ALIVE").count() == 2, timeout=30, message="2 workers"
    )
    first = wait_for(holder, timeout=30, message="a housekeeper")
    by_id = by_worker(started)
    task_id = deferred_task(1)
    wait_for(lambda: finished(task_id), timeout=30, message="a deferred task staged by the housekeeper")

    by_id[first].signal(signal.SIGKILL)
    by_id[first].wait(10)
    # Within TTL + TRY_EVERY (7.5 s) of the kill; a deferred task due meanwhile runs once it is over.
    task_id = deferred_task(0.5)
    second = wait_for(
        lambda: holder() not in (None, first) and holder(), timeout=30, message="a new housekeeper"
    )
    assert second in by_id
    wait_for(lambda: finished(task_id), timeout=30, message="the deferred task staged by the new housekeeper")


@pytest.mark.slow
def test_a_housekeeper_stopped_by_sigterm_gives_the_row_up(workers: Start) -> None:
    started = [workers("--concurrency", "1", "--poll-interval", "1") for _ in range(2)]
    wait_for(
        lambda: models.Worker.objects.filter(state="ALIVE").count() == 2, timeout=30, message="2 workers"
    )
    first = wait_for(holder, timeout=30, message="a housekeeper")
    by_id = by_worker(started)
    by_id[first].signal(signal.SIGTERM)
    assert by_id[first].wait(30) == 0, by_id[first].output()
    assert "housekeeping_given_up" in by_id[first].output()
    assert holder() != first  # not left to expire: free, or taken by the other already
    wait_for(lambda: holder() not in (None, first), timeout=30, message="taken over")


def by_worker(processes: list[WorkerProcess]) -> dict[uuid.UUID, WorkerProcess]:
    return {models.Worker.objects.get(pid=process.pid).id: process for process in processes}
