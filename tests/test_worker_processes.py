"""Real worker processes, real signals, real PostgreSQL."""

from __future__ import annotations

import gc
import os
import random
import signal
import time
import weakref
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from queueapp import models, store
from tests import tasks
from tests.conftest import make_worker
from tests.helpers import FAST_ENV, WorkerProcess, child_pids, run_manage, wait_for
from workers import forked

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

Start = Callable[..., WorkerProcess]


def count(status: str) -> int:
    return models.Task.objects.filter(status=status).count()


def test_2000_mixed_priority_tasks_on_3_processes_run_exactly_once(
    workers: Start, side_effects: psycopg.Connection
) -> None:
    rng = random.Random(7)
    calls = [((f"k{i}",), {}) for i in range(2000)]
    batch = [(tasks.record.using(priority=rng.randint(-100, 100)), args, kwargs) for args, kwargs in calls]
    tasks.record.get_backend().enqueue_many(batch)

    worker = workers("--processes", "3", "--concurrency", "4", "--burst")
    assert worker.wait(180) == 0, worker.output()

    assert count("SUCCESSFUL") == 2000
    assert models.Task.objects.exclude(attempts=1).count() == 0
    assert side_effects.execute("SELECT count(*), count(DISTINCT key) FROM test_side_effect").fetchone() == (
        2000,
        2000,
    )
    used = models.Worker.objects.filter(tasks__isnull=False).distinct().count()
    assert used == 3, "all three processes took work"


def test_one_worker_with_concurrency_1_runs_strictly_by_priority(
    workers: Start, side_effects: psycopg.Connection
) -> None:
    rng = random.Random(11)
    for i in range(60):
        tasks.record.using(priority=rng.randint(-100, 100)).enqueue(f"k{i}")
    expected = list(
        models.Task.objects.order_by("-priority", "run_after", "id").values_list("args", flat=True)
    )

    worker = workers("--concurrency", "1", "--burst")
    assert worker.wait(60) == 0, worker.output()

    executed = [row[0] for row in side_effects.execute("SELECT key FROM test_side_effect ORDER BY seq")]
    assert executed == [args[0] for args in expected]


def test_a_success_the_database_refuses_fails_alone_and_the_rest_of_its_round_is_recorded(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    """Successes are recorded a round at a time; when the database refuses one (here a CHECK the
    test adds, in life a trigger or a value jsonb cannot hold), the round's others still succeed
    and that one fails with the database's error."""
    raw_conn.execute(
        "ALTER TABLE queueapp_task_history ADD CONSTRAINT test_refuse"
        ' CHECK (NOT return_value @> \'{"args": ["refuse"]}\')'
    )
    try:
        refused = tasks.echo.using(max_attempts=1).enqueue("refuse")
        fine = tasks.echo.enqueue_many([((i,), {}) for i in range(40)])
        worker = workers("--concurrency", "16", "--burst")
        assert worker.wait(60) == 0, worker.output()
        assert "round_refused" in worker.log_path.read_text()
        row = models.Task.objects.get(id=int(refused.id))
        assert row.status == "FAILED"
        assert row.errors[0]["exception_class_path"] == "django.db.utils.IntegrityError"
        assert "test_refuse" in row.errors[0]["message"]
        succeeded = models.Task.objects.filter(id__in=[int(r.id) for r in fine], status="SUCCESSFUL")
        assert succeeded.count() == 40
    finally:
        raw_conn.execute("ALTER TABLE queueapp_task_history DROP CONSTRAINT test_refuse")


def listener_pids(raw_conn: psycopg.Connection) -> list[int]:
    rows = raw_conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'taskqueue-listener'"
        " AND query = 'LISTEN taskqueue' AND datname = current_database()"
    ).fetchall()
    return [row[0] for row in rows]


POLL_INTERVAL = 30
"""The notify test's --poll-interval: jittered, the worker's next poll is at least 24 s away."""
NOTIFY_DEADLINE = 1.0
"""A notified idle worker claims within this: far inside the poll interval, so only a wake-up can."""
RECONNECT_DEADLINE = 5.0
"""A task enqueued as the listener dies is claimed within this, not left for the poll: its NOTIFY may
be lost with the old connection, but the listener wakes the worker when it notices the loss and when
it has LISTENed again (0.1 s later); whichever comes after the commit claims it. Each wake-up alone
is proven by test_worker_services.py::test_listener_wakes_on_its_queues_only_and_reconnects."""


def started(raw_conn: psycopg.Connection, task_id: str) -> bool:
    row = raw_conn.execute(
        "SELECT started_at IS NOT NULL FROM queueapp_task WHERE id = %s", [int(task_id)]
    ).fetchone()
    return bool(row and row[0])


def settle(raw_conn: psycopg.Connection) -> None:
    """Run one task to its recorded success. The round that recorded it began after every earlier
    wake-up (start, LISTEN, reconnect), so from here the idle worker waits for a notification or
    for its poll, and a task it claims within NOTIFY_DEADLINE was woken for."""
    task_id = tasks.add.enqueue(0, 0).id
    wait_for(  # past the poll, so that a broken wake-up fails the check that follows, not this
        lambda: models.Task.objects.filter(id=int(task_id), status="SUCCESSFUL").exists(),
        timeout=POLL_INTERVAL * 1.2 + 10,
        message=f"settling task {task_id} to succeed",
    )


def test_notify_wakes_an_idle_worker_at_once_and_survives_a_killed_listener(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    """An enqueue's NOTIFY makes an idle worker claim the task within NOTIFY_DEADLINE, long before
    its poll; a task enqueued as its listener is killed still starts within RECONNECT_DEADLINE;
    the listener LISTENs again on a new connection, and that one wakes the worker at once too."""
    worker = workers("--poll-interval", str(POLL_INTERVAL), "--concurrency", "2")
    first_listener = wait_for(
        lambda: listener_pids(raw_conn), timeout=15, message="LISTEN in pg_stat_activity"
    )[0]
    settle(raw_conn)
    # Wake-ups naming it come on its listener's own channel (migration 0015).
    (row,) = models.Worker.objects.filter(state="ALIVE")
    assert row.wake_channel == f"taskqueue_{row.id.hex}"

    notified = tasks.add.enqueue(1, 2).id
    wait_for(
        lambda: started(raw_conn, notified),
        timeout=NOTIFY_DEADLINE,
        message=f"the notified idle worker to claim task {notified} (its poll is {POLL_INTERVAL} s away)",
    )

    raw_conn.execute("SELECT pg_terminate_backend(%s)", [first_listener])
    around_the_kill = tasks.add.enqueue(2, 3).id
    wait_for(
        lambda: started(raw_conn, around_the_kill),
        timeout=RECONNECT_DEADLINE,
        message=f"task {around_the_kill}, enqueued as the listener was killed, to start before the poll",
    )
    wait_for(
        lambda: [pid for pid in listener_pids(raw_conn) if pid != first_listener],
        timeout=10,
        message="a new LISTEN backend after pg_terminate_backend",
    )
    settle(raw_conn)

    renotified = tasks.add.enqueue(3, 4).id
    wait_for(
        lambda: started(raw_conn, renotified),
        timeout=NOTIFY_DEADLINE,
        message=f"the new listener to wake the worker for task {renotified}",
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()


def test_sigkill_mid_task_then_reap_stale_and_another_worker_finishes_all(workers: Start) -> None:
    results = [tasks.slow_with_attempt.enqueue(3.0) for _ in range(20)]
    doomed = workers("--concurrency", "20")
    wait_for(lambda: count("RUNNING") == 20, timeout=20, message="20 tasks running on the first worker")
    doomed.signal(signal.SIGKILL)
    doomed.wait(10)

    # Nothing happens to its tasks until its heartbeat is stale (STALE_AFTER=2 in these tests).
    def reaped() -> str | None:
        proc = run_manage("reap_stale")
        return proc.stdout if "workers_lost=1" in proc.stdout else None

    output = wait_for(reaped, timeout=20, message="reap_stale to mark the killed worker lost", interval=0.5)
    assert "tasks_requeued=20" in output
    assert count("RUNNING") == 0

    rescuer = workers("--concurrency", "20")
    wait_for(lambda: count("SUCCESSFUL") == 20, timeout=40, message="all 20 tasks to succeed elsewhere")
    rows = models.Task.objects.filter(id__in=[int(r.id) for r in results])
    assert {row.attempts for row in rows} == {2}
    assert {row.return_value for row in rows} == {2}  # takes_context saw attempt 2
    assert all(row.errors[0]["exception_class_path"] == "queueapp.exceptions.WorkerLost" for row in rows)
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait(30) == 0


def test_a_paused_worker_is_reaped_and_after_sigcont_changes_nothing_and_exits(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    for _ in range(5):
        tasks.sleep_then_return.enqueue(2.0, "from the paused worker")
    paused = workers("--concurrency", "5")
    wait_for(lambda: count("RUNNING") == 5, timeout=20, message="5 tasks running")
    paused.signal(signal.SIGSTOP)
    paused_row = models.Worker.objects.get(pid=paused.pid)

    wait_for(
        lambda: "workers_lost=1" in run_manage("reap_stale").stdout,
        timeout=20,
        message="the paused worker reaped",
        interval=0.5,
    )
    rescuer = workers("--concurrency", "5")
    wait_for(lambda: count("SUCCESSFUL") == 5, timeout=30, message="tasks finished by another worker")
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait(30) == 0
    before_tasks = list(models.Task.objects.order_by("id").values())
    before_worker = models.Worker.objects.filter(id=paused_row.id).values().get()
    assert before_worker["state"] == "LOST"

    paused.signal(signal.SIGCONT)
    code = paused.wait(30)

    # Its lease ran out while it was paused: it exits without another word to the database.
    assert code == 4, paused.output()
    assert list(models.Task.objects.order_by("id").values()) == before_tasks
    assert models.Worker.objects.filter(id=paused_row.id).values().get() == before_worker
    assert "reason=lease_expired" in paused.output()


def test_sigterm_lets_running_tasks_finish_and_exits_0(workers: Start) -> None:
    for _ in range(3):
        tasks.sleep_then_return.enqueue(1.5)
    worker = workers("--concurrency", "3", "--grace", "20")
    wait_for(lambda: count("RUNNING") == 3, timeout=20, message="3 tasks running")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    assert count("SUCCESSFUL") == 3
    assert count("RUNNING") == 0
    assert models.Worker.objects.get(pid=worker.pid).state == "STOPPED"


def test_second_signal_stops_now_and_requeues_running_tasks_with_the_attempt_counted(workers: Start) -> None:
    for _ in range(2):
        tasks.sleep_then_return.enqueue(30)
    worker = workers("--concurrency", "2", "--grace", "60")
    wait_for(lambda: count("RUNNING") == 2, timeout=20, message="2 tasks running")
    worker.signal(signal.SIGTERM)
    wait_for(lambda: models.Worker.objects.filter(state="STOPPING").exists(), timeout=10, message="STOPPING")
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 1, worker.output()
    rows = list(models.Task.objects.all())
    assert [row.status for row in rows] == ["SCHEDULED", "SCHEDULED"]  # after their backoff
    assert {row.attempts for row in rows} == {1}
    assert {row.errors[0]["exception_class_path"] for row in rows} == {
        "queueapp.exceptions.WorkerInterrupted"
    }


def test_a_task_that_kills_its_process_is_retried_then_failed_while_others_flow(workers: Start) -> None:
    poison = tasks.kill_own_process.enqueue()
    others = tasks.add.using(max_attempts=10).enqueue_many(((i, i), {}) for i in range(40))
    supervisor = workers("--processes", "2", "--concurrency", "2")

    wait_for(
        lambda: models.Task.objects.get(id=int(poison.id)).status == "FAILED",
        timeout=60,
        message="the poison task to be FAILED",
    )
    wait_for(
        lambda: (
            models.Task.objects.filter(id__in=[int(r.id) for r in others], status="SUCCESSFUL").count() == 40
        ),
        timeout=60,
        message="the other tasks to succeed",
    )
    row = models.Task.objects.get(id=int(poison.id))
    assert row.attempts == 3
    assert [e["exception_class_path"] for e in row.errors] == ["queueapp.exceptions.WorkerLost"] * 3
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.output()


def test_a_task_past_its_timeout_has_its_process_killed_and_fails(workers: Start) -> None:
    late = tasks.sleep_then_return.using(timeout=1, max_attempts=1).enqueue(60)
    quick = tasks.add.enqueue(1, 1)
    supervisor = workers("--processes", "2", "--concurrency", "2")
    wait_for(
        lambda: models.Task.objects.get(id=int(late.id)).status == "FAILED",
        timeout=30,
        message="timed-out task FAILED",
    )
    row = models.Task.objects.get(id=int(late.id))
    assert row.errors[0]["exception_class_path"] == "queueapp.exceptions.TaskTimeout"
    wait_for(
        lambda: models.Task.objects.get(id=int(quick.id)).status == "SUCCESSFUL", timeout=30, message="quick"
    )
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.output()


def test_cancelling_a_running_task_is_seen_by_the_task_and_never_successful(workers: Start) -> None:
    result = tasks.wait_for_cancel.enqueue()
    worker = workers("--concurrency", "1")
    wait_for(lambda: count("RUNNING") == 1, timeout=20, message="task running")
    assert tasks.wait_for_cancel.get_backend().cancel(result.id) is True
    wait_for(lambda: count("CANCELLED") == 1, timeout=20, message="task cancelled")
    row = models.Task.objects.get(id=int(result.id))
    assert row.return_value is None
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_runworker_rejects_bad_options_clearly() -> None:
    proc = run_manage("runworker", "--concurrency", "0")
    assert proc.returncode != 0
    assert "--concurrency must be at least 1, not 0" in proc.stderr
    proc = run_manage("runworker", "--queues", "nope")
    assert "unknown queue(s) nope" in proc.stderr


def test_max_tasks_recycles_processes_under_the_supervisor(workers: Start) -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(30))
    supervisor = workers("--processes", "2", "--concurrency", "1", "--max-tasks", "5")
    wait_for(lambda: count("SUCCESSFUL") == 30, timeout=60, message="30 tasks done by recycled processes")
    per_worker = Counter(models.Task.objects.values_list("worker_id", flat=True))
    assert max(per_worker.values()) <= 5, per_worker  # so at least 6 processes ran the 30
    wait_for(
        lambda: models.Worker.objects.filter(state="STOPPED").count() >= 6,
        timeout=30,
        message="each recycled process to record itself STOPPED",
    )
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.output()


def test_a_childs_garbage_collection_leaves_the_pages_it_shares_with_its_supervisor(workers: Start) -> None:
    """A full collection writes to every object it scans; in a forked child that scanned the
    supervisor's objects (all of Django), it copied about 19 MiB of shared pages, per child and
    for good. What the supervisor had loaded is frozen before each fork, so a child scans only
    its own objects."""
    result = tasks.memory_a_full_collection_copies.enqueue()
    supervisor = workers("--processes", "2", "--concurrency", "1")
    wait_for(lambda: count("SUCCESSFUL") == 1, timeout=60, message="the task to run in a child")
    copied_kib = tasks.memory_a_full_collection_copies.get_result(result.id).return_value
    assert copied_kib < 4096, f"a full collection in a child copied {copied_kib} KiB"
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.output()


def test_garbage_a_supervisor_made_between_two_forks_is_collected_not_frozen_for_good() -> None:
    """A supervisor freezes its objects at each fork (a child restarted, say by --max-tasks): what
    became garbage since the last one is collected first, never kept for the supervisor's life."""
    gc.disable()  # no collection by chance between the garbage and the freeze
    gc.freeze()  # the first fork's
    try:
        garbage = Cycle()
        garbage.itself = garbage
        gone = weakref.ref(garbage)
        del garbage
        forked.freeze_for_fork()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.enable()


class Cycle:
    itself: Cycle


def test_a_sigterm_that_reaches_a_child_still_being_forked_stops_it(workers: Start) -> None:
    """A child holds its supervisor's signal handlers from the fork until it sets its own; a SIGTERM
    forwarded to it then (here: while an at-fork hook sleeps) ran the supervisor's handler in the
    child, and the child went on to work for ever while its supervisor waited for it. Signals wait
    until the child has its own handlers, and it stops."""
    slow = {"SLOW_FORK": "2"}
    supervisor = workers("--processes", "2", "--concurrency", "1", env=slow, script="tests/slow_fork.py")
    wait_for(
        lambda: supervisor.output().count("child_started") == 2, timeout=30, message="two children forked"
    )
    supervisor.signal(signal.SIGTERM)  # forwarded to the children, still in their at-fork hook
    assert supervisor.wait(30) == 0, supervisor.output()
    assert "worker_started" not in supervisor.output()  # it never ran a worker


@pytest.mark.parametrize("notify", ["on", "off"])
def test_an_idle_supervisor_sleeps_until_a_service_is_due_but_a_child_exit_or_a_signal_wakes_it(
    workers: Start, notify: str
) -> None:
    """Its loop sleeps until its next service (here ten minutes away), listening or not: a child's
    exit (SIGCHLD) and SIGTERM wake it at once through the wakeup fd, as the 0.5 s poll of its
    children did, which cost an idle fleet two wake-ups a second per host."""
    quiet = {
        "TASKQUEUE_NOTIFY": notify,
        "TASKQUEUE_STAGE_INTERVAL": "600",
        "TASKQUEUE_SCHEDULE_INTERVAL": "600",
        "TASKQUEUE_SCHEDULE_GRACE": "1200",
        "TASKQUEUE_STALE_AFTER": "1200",  # the reaper every 600 s
    }
    supervisor = workers("--processes", "2", "--concurrency", "1", "--poll-interval", "600", env=quiet)
    wait_for(lambda: len(child_pids(supervisor.pid)) == 2, timeout=30, message="two children")
    wait_for(
        lambda: models.Worker.objects.filter(state="ALIVE").count() == 2, timeout=30, message="registered"
    )
    # Once at rest (its start-up's statements done: each is a wait for the server) it does not
    # wake: a window of two seconds with at most one voluntary context switch of its main thread
    # (a count, not a time; the 0.5 s poll of its children made four or more in every window).
    status = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/status")
    wait_for(
        lambda: quiet_for_two_seconds(status),
        timeout=30,
        message="a two-second window in which the idle supervisor does not wake",
    )
    os.kill(child_pids(supervisor.pid)[0], signal.SIGKILL)
    wait_for(
        lambda: supervisor.output().count("child_started") == 3,
        timeout=10,
        message=lambda: f"the killed child replaced at once; log:\n{supervisor.output()}",
    )
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(10) == 0, supervisor.output()


def switches(status: Path) -> int:
    (line,) = [line for line in status.read_text().splitlines() if line.startswith("voluntary_ctxt_switches")]
    return int(line.split()[1])


def quiet_for_two_seconds(status: Path) -> bool:
    before = switches(status)
    time.sleep(2)  # the window observed, not a wait for something to happen
    return switches(status) - before <= 1


def running(pid: int) -> bool:
    """Not exited: an orphan's new parent may be slow to reap it, so a zombie counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_children_of_a_sigkilled_supervisor_stop_and_hand_their_running_tasks_back(workers: Start) -> None:
    """Nothing supervises the children any more (restarts, task timeouts): each notices at its
    next heartbeat that its parent changed and stops as on SIGTERM. Running tasks get --grace to
    finish; these outlast it, so they go back through the failure path, attempt counted."""
    long = [tasks.sleep_then_return.enqueue(60) for _ in range(4)]
    supervisor = workers("--processes", "2", "--concurrency", "2", "--grace", "1")
    wait_for(lambda: count("RUNNING") == 4, timeout=30, message="4 tasks running on 2 children")
    children = child_pids(supervisor.pid)
    assert len(children) == 2
    child_workers = set(models.Worker.objects.filter(pid__in=children).values_list("id", flat=True))
    assert len(child_workers) == 2

    supervisor.signal(signal.SIGKILL)
    supervisor.wait(10)
    # Noticed within a heartbeat, then --grace for the running tasks, then the shutdown writes.
    deadline = float(FAST_ENV["TASKQUEUE_HEARTBEAT_INTERVAL"]) + 1 + 5
    try:
        wait_for(
            lambda: not any(running(pid) for pid in children),
            timeout=deadline,
            message=lambda: f"both orphaned children to exit; log:\n{supervisor.output()}",
        )
    finally:
        for pid in children:
            if running(pid):
                os.kill(pid, signal.SIGKILL)

    assert supervisor.output().count("supervisor_gone") == 2
    assert set(models.Worker.objects.filter(id__in=child_workers).values_list("state", flat=True)) == {
        "STOPPED"
    }
    rows = list(models.Task.objects.filter(id__in=[int(r.id) for r in long]))
    assert {row.status for row in rows} <= {"SCHEDULED", "READY"}  # waiting again (staged once due)
    assert {row.attempts for row in rows} == {1}
    assert {row.errors[0]["exception_class_path"] for row in rows} == {
        "queueapp.exceptions.WorkerInterrupted"
    }


def test_a_task_that_calls_sys_exit_fails_and_its_thread_runs_the_next(workers: Start) -> None:
    """SystemExit is not an Exception: caught as one, it once ended the pool thread silently and
    left the task RUNNING, the worker a slot short for good (none left at --concurrency 1)."""
    exited = tasks.exits.enqueue(2)
    worker = workers("--concurrency", "1")
    wait_for(
        lambda: models.Task.objects.get(id=int(exited.id)).status == "FAILED",
        timeout=30,
        message=lambda: f"the task to be FAILED; worker log:\n{worker.output()}",
    )
    row = models.Task.objects.get(id=int(exited.id))
    assert row.errors[0]["exception_class_path"] == "builtins.SystemExit"
    after = tasks.add.enqueue(2, 3)
    wait_for(
        lambda: models.Task.objects.get(id=int(after.id)).status == "SUCCESSFUL",
        timeout=30,
        message=lambda: f"the next task to run on the same thread; worker log:\n{worker.output()}",
    )


def test_a_task_cancelled_while_claimed_ahead_and_handed_back_never_runs(
    workers: Start, side_effects: psycopg.Connection
) -> None:
    """Cancelled while it waited in a worker's inbox (RUNNING to the database), then handed back at
    shutdown: READY again with its cancel requested. The next worker must not run it."""
    result = tasks.record.enqueue("cancelled-ahead")
    holder = make_worker()
    (claimed,) = store.claim_tasks(worker_id=holder.id, queues=["default"], limit=1)
    assert tasks.record.get_backend().cancel(result.id) is True  # RUNNING: a request, not the end
    assert store.release_tasks(worker_id=holder.id, claimed=[(claimed.id, claimed.attempts)]) == [claimed.id]
    worker = workers("--concurrency", "1")
    wait_for(
        lambda: models.Task.objects.get(id=int(result.id)).status == "CANCELLED",
        timeout=30,
        message=lambda: f"the task to end CANCELLED; worker log:\n{worker.output()}",
    )
    assert side_effects.execute("SELECT count(*) FROM test_side_effect").fetchone() == (0,)


def test_a_task_finished_receiver_that_raises_is_logged_and_the_worker_carries_on(workers: Start) -> None:
    """Receivers of successes run in the worker's main thread: one that raised ended the worker's
    loop, and the tasks it held stayed RUNNING under a STOPPED worker."""
    first = tasks.has_a_failing_receiver.enqueue()
    worker = workers("--concurrency", "1")
    after = tasks.add.enqueue(2, 3)
    wait_for(
        lambda: (
            models.Task.objects.filter(id__in=[int(first.id), int(after.id)], status="SUCCESSFUL").count()
            == 2
        ),
        timeout=30,
        message=lambda: f"both tasks to succeed; worker log:\n{worker.output()}",
    )
    assert "a task_finished receiver failed" in worker.output()
    assert worker.process.poll() is None


def test_a_dead_childs_tasks_are_reaped_soon_even_if_another_reaper_held_the_lock_then(
    workers: Start, raw_conn: psycopg.Connection
) -> None:
    """The supervisor reaps a child that died at once; if another reaper held the cluster-wide lock
    at that instant, it tries again on its next pass, rather than leaving the task to STALE_AFTER."""
    poison = tasks.kill_own_process.enqueue()
    stale = {"TASKQUEUE_STALE_AFTER": "120", "TASKQUEUE_HEARTBEAT_INTERVAL": "1"}
    with raw_conn.transaction():
        raw_conn.execute("SELECT pg_advisory_xact_lock(hashtext('taskqueue.reaper'))")
        supervisor = workers("--processes", "2", "--concurrency", "1", env=stale)
        wait_for(lambda: "child_exited" in supervisor.output(), timeout=30, message="a child to die")
    wait_for(
        lambda: len(models.Task.objects.get(id=int(poison.id)).errors) >= 1,
        timeout=20,
        message=lambda: f"the dead child's task to be reaped; log:\n{supervisor.output()}",
    )
