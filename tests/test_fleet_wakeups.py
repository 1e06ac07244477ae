"""Wake one, not all: a supervisor's one listener hands each wake-up to one idle child, real
processes and real signals. The supervisor and its children poll every 8-12 minutes here (unless a
test says otherwise), so a task that starts sooner was started by a wake-up, and a claim that no
wake-up asked for is not a child's backstop poll; claims are counted from the children's DEBUG log
("claimed worker=...")."""

from __future__ import annotations

import functools
import os
import re
import signal
import uuid
from collections import Counter
from collections.abc import Callable

import psycopg
import pytest
from django.test import override_settings

from bench import fleet as bench_fleet
from queueapp import models, store
from queueapp.states import WorkerState
from tests import tasks
from tests.helpers import WorkerProcess, child_pids, wait_for
from tests.settings import TASKQUEUE

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

Start = Callable[..., WorkerProcess]
POLL = "600"
WOKEN = 10.0
"""Seconds a woken task may take to start on a loaded machine: well inside the poll."""
DEBUG = {"LOG_LEVEL": "DEBUG"}
CLAIMED = re.compile(r"claimed worker=(\S+) free_slots=\d+ tasks=(\d+)")


def fleet(workers: Start, processes: int, poll: str = POLL) -> tuple[WorkerProcess, list[uuid.UUID]]:
    """A supervisor of idle children, every one of them marked waiting."""
    # No claim-ahead: with it a child running a task keeps free slots, and so its mark.
    supervisor = workers(
        "--processes",
        str(processes),
        "--concurrency",
        "1",
        "--prefetch",
        "0",
        "--poll-interval",
        poll,
        env=DEBUG,
    )
    wait_for(
        lambda: waiting_children() == processes, timeout=60, message=f"{processes} children waiting for work"
    )
    children = list(models.Worker.objects.filter(state=WorkerState.ALIVE).values_list("id", flat=True))
    # Each has claimed twice: its first round, and once more after marking itself waiting; and once
    # since the listener connected (which tells every child to look at the flow settings: a round),
    # unless those two came after it. Then no claim of the set-up is still to come.
    wait_for(lambda: b"listening channel" in supervisor.log_path.read_bytes(), timeout=30, message="listener")
    listening = supervisor.log_path.read_bytes().index(b"listening channel")

    def settled() -> bool:
        since = claims_since(supervisor, listening)
        return all(
            claims_since(supervisor, 0)[str(child)] >= 2 and since[str(child)] >= 1 for child in children
        )

    wait_for(settled, timeout=30, message="every child's claims of the set-up")
    return supervisor, children


def waiting_children() -> int:
    return models.Worker.objects.filter(state=WorkerState.ALIVE, waiting=True).count()


def claims_since(supervisor: WorkerProcess, offset: int) -> Counter[str]:
    """Claim statements per child in the log from offset on."""
    with supervisor.log_path.open(errors="replace") as log:
        log.seek(offset)
        return Counter(worker for worker, _ in CLAIMED.findall(log.read()))


def log_size(supervisor: WorkerProcess) -> int:
    supervisor.log.flush()
    return supervisor.log_path.stat().st_size


def started_by(raw_conn: psycopg.Connection, task_id: int) -> str | None:
    row = raw_conn.execute("SELECT worker_ids FROM queueapp_task WHERE id = %s", [task_id]).fetchone()
    return str(row[0][-1]) if row and row[0] else None


def listeners(raw_conn: psycopg.Connection) -> int:
    row = raw_conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'taskqueue-listener' AND datname = current_database()"
    ).fetchone()
    return int(row[0])


def stop(supervisor: WorkerProcess) -> None:
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.output()


def test_one_task_is_claimed_by_one_child_only_woken_at_once(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    supervisor, _ = fleet(workers, 3)
    assert listeners(raw_conn) == 1  # one LISTEN connection for the three children
    # Wake-ups naming any of them go to that listener's channel: one channel, not the shared one.
    alive = models.Worker.objects.filter(state=WorkerState.ALIVE)
    (channel,) = set(alive.values_list("wake_channel", flat=True))
    assert channel.startswith("taskqueue_"), channel
    for n in range(5):
        offset = log_size(supervisor)
        task_id = int(tasks.add.enqueue(n, n).id)
        runner = wait_for(
            functools.partial(started_by, raw_conn, task_id), timeout=WOKEN, message=f"task {n} woken"
        )
        # Its claims: the woken one, the round after the task, and once more after marking itself waiting.
        wait_for(
            lambda: claims_since(supervisor, offset)[runner] >= 3,  # noqa: B023 - called in this iteration
            timeout=30,
            message="the child that ran it waiting again",
        )
        claims = claims_since(supervisor, offset)
        assert claims == {runner: 3}, claims  # its siblings were not woken
    stop(supervisor)


def named_wake_up(raw_conn: psycopg.Connection, named: uuid.UUID) -> int:
    """A task enqueued without a notification, then one naming `named` (as queueapp_wake_waiters would)."""
    with override_settings(TASKQUEUE={**TASKQUEUE, "NOTIFY": False}):
        task_id = int(tasks.add.enqueue(1, 2).id)
    raw_conn.execute("SELECT pg_notify('taskqueue', %s)", [f"default {named}"])
    return task_id


def test_a_named_idle_child_claims_at_once_and_a_busy_ones_wake_up_goes_to_an_idle_sibling(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    supervisor, children = fleet(workers, 2)
    first, second = children
    offset = log_size(supervisor)
    task_id = named_wake_up(raw_conn, first)
    assert wait_for(lambda: started_by(raw_conn, task_id), timeout=WOKEN, message="named child") == str(first)
    wait_for(lambda: waiting_children() == 2, timeout=30, message="both children waiting again")
    assert set(claims_since(supervisor, offset)) == {str(first)}

    busy = int(tasks.sleep_then_return.enqueue(60).id)
    runner = uuid.UUID(wait_for(lambda: started_by(raw_conn, busy), timeout=WOKEN, message="the long task"))
    idle = second if runner == first else first
    wait_for(lambda: waiting_children() == 1, timeout=30, message="the busy child's mark cleared")
    task_id = named_wake_up(raw_conn, runner)
    assert wait_for(lambda: started_by(raw_conn, task_id), timeout=WOKEN, message="the sibling") == str(idle)
    supervisor.signal(signal.SIGTERM)
    wait_for(lambda: supervisor.output().count("worker_exit") == 1, timeout=30, message="the idle child out")
    supervisor.signal(signal.SIGTERM)  # the long task is interrupted
    assert supervisor.wait(30) == 1, supervisor.output()


def test_a_wake_up_naming_a_dead_worker_is_picked_up_by_the_poll(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    supervisor, _ = fleet(workers, 2, poll="1")
    dead = workers("--concurrency", "1", "--poll-interval", POLL)
    wait_for(lambda: waiting_children() == 3, timeout=60, message="the lone worker waiting too")
    (dead_id,) = models.Worker.objects.filter(pid=dead.pid).values_list("id", flat=True)
    dead.signal(signal.SIGKILL)
    dead.wait(10)
    task_id = named_wake_up(raw_conn, dead_id)  # its row is ALIVE and waiting until reaped
    wait_for(lambda: started_by(raw_conn, task_id), timeout=WOKEN, message="a child's poll")
    stop(supervisor)


def test_the_supervisors_listener_reconnects_after_its_backend_is_killed(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    supervisor, _ = fleet(workers, 2)
    (pid,) = raw_conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'taskqueue-listener'"
        " AND datname = current_database()"
    ).fetchone()
    raw_conn.execute("SELECT pg_terminate_backend(%s)", [pid])
    wait_for(lambda: "listener_disconnected" in supervisor.output(), timeout=30, message="the loss noticed")
    wait_for(lambda: listeners(raw_conn) == 1, timeout=30, message="the listener back")
    wait_for(lambda: waiting_children() == 2, timeout=30, message="children waiting after the reconnect")
    for n in range(3):
        task_id = int(tasks.add.enqueue(n, n).id)
        wait_for(
            functools.partial(started_by, raw_conn, task_id),
            timeout=WOKEN,
            message=f"task {n} after the reconnect",
        )
    stop(supervisor)


def test_a_resumed_queue_reaches_the_children_at_once(workers: Start, raw_conn: psycopg.Connection) -> None:
    supervisor, _ = fleet(workers, 2)
    store.set_paused("default", True)
    offset = log_size(supervisor)
    task_id = int(tasks.add.enqueue(1, 1).id)  # its wake-up finds the queue paused: no claim
    wait_for(lambda: claims_since(supervisor, offset), timeout=WOKEN, message="the woken child's empty claim")
    assert started_by(raw_conn, task_id) is None
    store.set_paused("default", False)
    wait_for(lambda: started_by(raw_conn, task_id), timeout=WOKEN, message="the resumed queue's task")
    stop(supervisor)


def test_a_child_holds_two_connections_and_its_supervisor_one_for_listening_and_housekeeping(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    """A child: its rounds' session and its heartbeat's; the supervisor: one Django connection that
    LISTENs for its children between the host's reaper, stager, scheduler and poll."""
    supervisor, _ = fleet(workers, 2)
    children = child_pids(supervisor.pid)
    seen: list[Counter[str]] = []

    def held() -> bool:
        seen.append(bench_fleet.connections(raw_conn, [supervisor.pid], children))
        return seen[-1]["supervisor"] == 1 and seen[-1]["child"] == 4  # "other": the test's own

    try:
        wait_for(held, timeout=30, message="2 connections per child, 1 for the supervisor")
    except AssertionError:
        raise AssertionError(f"connections held: {seen[-1]}") from None
    stop(supervisor)


def test_the_supervisor_polls_for_its_idle_children_and_wakes_one_of_them(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    """A task nobody was told of (NOTIFY off for its enqueue): the supervisor's poll finds it and
    wakes one child. While that child runs it for 3 s, its idle sibling makes no claim of its own
    (before, it polled every 1.2-1.8 s): a child's own poll is a backstop every minute."""
    supervisor, _ = fleet(workers, 2, poll="1.5")
    offset = log_size(supervisor)
    with override_settings(TASKQUEUE={**TASKQUEUE, "NOTIFY": False}):
        task_id = int(tasks.sleep_then_return.enqueue(3).id)
    runner = wait_for(functools.partial(started_by, raw_conn, task_id), timeout=WOKEN, message="task polled")
    wait_for(
        lambda: models.Task.objects.filter(id=task_id, status="SUCCESSFUL").exists(),
        timeout=30,
        message="the task done",
    )
    # The runner's claims: the one that took the task, the round after it, and once more after
    # marking itself waiting.
    wait_for(lambda: claims_since(supervisor, offset)[runner] >= 3, timeout=30, message="the runner waiting")
    claims = claims_since(supervisor, offset)
    assert claims == {runner: 3}, claims
    stop(supervisor)


def test_a_child_restart_leaves_the_supervisors_listening_connection_as_it_was(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    """A fork neither closes the supervisor's connection (its LISTEN and housekeeping) nor lets the
    child use or close its copy: the same backend listens before and after a child is replaced, and
    tasks are still woken at once."""
    supervisor, _ = fleet(workers, 2)

    def listening_backend() -> int:
        (pid,) = raw_conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'taskqueue-listener'"
            " AND datname = current_database()"
        ).fetchone()
        return int(pid)

    before = listening_backend()
    (victim, _) = child_pids(supervisor.pid)
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: "child_started" in supervisor.output().partition("child_exited")[2],
        timeout=30,
        message="the killed child replaced",
    )
    wait_for(lambda: waiting_children() == 2, timeout=60, message="both children waiting again")
    assert listening_backend() == before
    assert "listener_disconnected" not in supervisor.output()
    task_id = int(tasks.add.enqueue(1, 1).id)
    wait_for(functools.partial(started_by, raw_conn, task_id), timeout=WOKEN, message="a task woken after")
    stop(supervisor)
