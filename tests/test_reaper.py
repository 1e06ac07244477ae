"""The reaper: guarded, safe to run concurrently, and never reopens a finished task."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from queueapp import models, store
from tests import tasks
from tests.conftest import make_worker
from tests.helpers import end_task, run_manage
from workers.stager import Stager

pytestmark = pytest.mark.django_db(transaction=True)

REAP = {"backoff_base": 0.0, "backoff_max": 0.0}


def age_heartbeat(raw_conn: psycopg.Connection, worker: models.Worker, seconds: float) -> None:
    raw_conn.execute(
        "UPDATE queueapp_worker SET last_heartbeat_at = now() - make_interval(secs => %s) WHERE id = %s",
        [seconds, worker.id],
    )


def test_reap_requeues_a_lost_workers_tasks_and_fails_those_out_of_attempts(
    raw_conn: psycopg.Connection,
) -> None:
    keep = tasks.add.enqueue(1, 1)
    last_try = tasks.add.using(max_attempts=1).enqueue(2, 2)
    worker, healthy = make_worker(), make_worker()
    store.claim_tasks(worker_id=worker.id, queues=["default"], limit=2)
    age_heartbeat(raw_conn, worker, 60)

    outcome = store.reap_workers(stale_after=30, **REAP)

    assert outcome == store.ReapOutcome(True, 1, 1, 1)
    assert models.Worker.objects.get(id=worker.id).state == "LOST"
    assert models.Worker.objects.get(id=healthy.id).state == "ALIVE"
    requeued = models.Task.objects.get(id=int(keep.id))
    # Back to waiting, after its backoff (here 0 s): the stager makes it READY when due.
    assert (requeued.status, requeued.worker_id, requeued.attempts) == ("SCHEDULED", None, 1)
    failed = models.Task.objects.get(id=int(last_try.id))
    assert failed.status == "FAILED"
    assert "was lost" in failed.errors[0]["message"]
    assert store.reap_workers(stale_after=30, **REAP) == store.ReapOutcome(True, 0, 0, 0)


def test_a_lost_worker_cannot_claim_or_beat(raw_conn: psycopg.Connection) -> None:
    tasks.add.enqueue(1, 1)
    worker = make_worker()
    age_heartbeat(raw_conn, worker, 60)
    store.reap_workers(stale_after=30, **REAP)
    assert store.claim_tasks(worker_id=worker.id, queues=["default"], limit=5) == []
    assert store.beat_worker(worker.id) is False
    assert store.set_worker_state(worker.id, "STOPPED") is False
    assert models.Worker.objects.get(id=worker.id).state == "LOST"


def test_running_tasks_left_on_an_already_lost_worker_are_reaped(raw_conn: psycopg.Connection) -> None:
    # A claim that committed while a reaper was marking its worker LOST leaves exactly this state.
    result = tasks.add.enqueue(1, 1)
    worker = make_worker()
    store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    raw_conn.execute("UPDATE queueapp_worker SET state = 'LOST' WHERE id = %s", [worker.id])
    assert store.reap_workers(stale_after=30, **REAP).tasks_requeued == 1
    assert models.Task.objects.get(id=int(result.id)).status == "SCHEDULED"


def test_only_one_reaper_runs_at_a_time(raw_conn: psycopg.Connection) -> None:
    raw_conn.execute("BEGIN")
    raw_conn.execute("SELECT pg_advisory_xact_lock(hashtext('taskqueue.reaper'))")
    try:
        assert store.reap_workers(stale_after=30, **REAP).ran is False
        proc = run_manage("reap_stale")
        assert "another reaper is running" in proc.stdout
    finally:
        raw_conn.execute("ROLLBACK")
    assert store.reap_workers(stale_after=30, **REAP).ran is True


def test_reap_stale_command_reports_and_dry_run_changes_nothing(raw_conn: psycopg.Connection) -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(3))
    worker = make_worker()
    store.claim_tasks(worker_id=worker.id, queues=["default"], limit=3)
    age_heartbeat(raw_conn, worker, 120)

    dry = run_manage("reap_stale", "--dry-run", "--stale-after", "60")
    assert dry.returncode == 0, dry.stderr
    assert "would mark workers_lost=1 tasks_requeued=3 tasks_failed=0" in dry.stdout
    assert models.Task.objects.filter(status="RUNNING").count() == 3

    real = run_manage("reap_stale", "--stale-after", "60")
    assert real.returncode == 0, real.stderr
    assert "marked workers_lost=1 tasks_requeued=3 tasks_failed=0" in real.stdout
    assert models.Task.objects.filter(status="SCHEDULED").count() == 3

    bad = run_manage("reap_stale", "--stale-after", "0")
    assert bad.returncode != 0
    assert "--stale-after 0 is too short" in bad.stderr


def test_reap_stale_refuses_a_stale_after_that_would_write_off_live_workers(
    raw_conn: psycopg.Connection,
) -> None:
    # A live worker between two beats of 30 s (and a late one). The margin to the allowed
    # --stale-after is 24 s, for the two manage.py runs to start on a loaded machine.
    worker = make_worker()
    age_heartbeat(raw_conn, worker, 36)
    env = {"TASKQUEUE_HEARTBEAT_INTERVAL": "30"}

    refused = run_manage("reap_stale", "--stale-after", "59", env=env)
    assert refused.returncode != 0
    assert "workers beat every 30 s" in refused.stderr
    assert "at least two intervals (60 s)" in refused.stderr
    assert models.Worker.objects.get(id=worker.id).state == "ALIVE"

    allowed = run_manage("reap_stale", "--stale-after", "60", env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert "marked workers_lost=0" in allowed.stdout


def test_four_reapers_at_the_stale_boundary_never_reopen_a_finished_task(
    raw_conn: psycopg.Connection,
) -> None:
    # Every move into history (a task ending) and out of it (a task reopened) is recorded by a
    # trigger, so a task that ends twice, or ends and comes back, cannot hide.
    raw_conn.execute("CREATE TABLE IF NOT EXISTS test_transition (task_id bigint, old text, new text)")
    raw_conn.execute("TRUNCATE test_transition")
    raw_conn.execute(
        """
        CREATE OR REPLACE FUNCTION test_record_transition() RETURNS trigger AS $$
        BEGIN
          IF TG_OP = 'INSERT' THEN
            INSERT INTO test_transition VALUES (NEW.id, 'live', NEW.status);
          ELSE
            INSERT INTO test_transition VALUES (OLD.id, OLD.status, 'reopened');
          END IF;
          RETURN NULL;
        END $$ LANGUAGE plpgsql;
        DROP TRIGGER IF EXISTS test_transition ON queueapp_task_history;
        CREATE TRIGGER test_transition AFTER INSERT OR DELETE ON queueapp_task_history FOR EACH ROW
          EXECUTE FUNCTION test_record_transition();
        """
    )
    tasks.add.using(max_attempts=50).enqueue_many(((i, i), {}) for i in range(400))
    stale_after = 0.15
    stop = threading.Event()
    reaped = []

    def reaper() -> None:
        try:
            while not stop.is_set():
                reaped.append(store.reap_workers(stale_after=stale_after, **REAP))
                Stager().run_once()  # retries and requeued tasks wait as SCHEDULED until due
        finally:
            connection.close()

    def worker_loop(seed: int) -> None:
        # Beats, claims and finishes with pauses around the stale boundary, so reapers and
        # finishes race: sometimes the finish wins, sometimes the reaper does.
        rng = random.Random(seed)
        try:
            worker_id = uuid.uuid4()
            store.register_worker(
                worker_id=worker_id, hostname="race", pid=seed, queues=["default"], concurrency=3
            )
            while not stop.is_set():
                if not store.beat_worker(worker_id):
                    worker_id = uuid.uuid4()
                    store.register_worker(
                        worker_id=worker_id, hostname="race", pid=seed, queues=["default"], concurrency=3
                    )
                rows = store.claim_tasks(worker_id=worker_id, queues=["default"], limit=3)
                time.sleep(rng.uniform(0.1, 0.2))
                for row in rows:
                    if rng.random() < 0.8:
                        store.finish_task(
                            task_id=row.id, worker_id=worker_id, attempt=row.attempts, return_value_json="0"
                        )
                    else:
                        store.fail_task(
                            task_id=row.id,
                            worker_id=worker_id,
                            attempt=row.attempts,
                            error={"exception_class_path": "x.Y", "message": "", "traceback": ""},
                            backoff_base=0,
                            backoff_max=0,
                        )
        finally:
            connection.close()

    threads = [threading.Thread(target=reaper) for _ in range(4)]
    threads += [threading.Thread(target=worker_loop, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while (
        models.Task.objects.exclude(status__in=["SUCCESSFUL", "FAILED"]).exists()
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(30)
    raw_conn.execute("DROP TRIGGER test_transition ON queueapp_task_history")

    reopened = raw_conn.execute("SELECT count(*) FROM test_transition WHERE new = 'reopened'").fetchone()
    assert reopened == (0,)
    ended_twice = raw_conn.execute(
        "SELECT count(*) FROM (SELECT task_id FROM test_transition GROUP BY task_id HAVING count(*) > 1) AS t"
    ).fetchone()
    assert ended_twice == (0,)
    assert raw_conn.execute("SELECT count(*), count(DISTINCT id) FROM queueapp_task").fetchone() == (400, 400)
    assert sum(outcome.tasks_requeued for outcome in reaped) > 0, "the reapers never raced a finish"
    assert sum(1 for outcome in reaped if not outcome.ran) > 0, "the reapers never overlapped"
    assert not models.Task.objects.exclude(status__in=["SUCCESSFUL", "FAILED"]).exists()


def test_purge_tasks_drops_old_days_and_deletes_the_rest_in_batches(raw_conn: psycopg.Connection) -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(12))
    ids = list(models.Task.objects.order_by("id").values_list("id", flat=True))
    old_done, old_failed, new_done, waiting = ids[:5], ids[5:7], ids[7:9], ids[9:]
    # A day 20 days back with a partition of its own (as the workers would have made it then); the
    # failures of 30 days back land in the default partition (no partition for that day).
    day = (timezone.now() - dt.timedelta(days=20)).astimezone(dt.UTC).date()
    partition = store.history.partition_name(day)
    raw_conn.execute(
        f"CREATE TABLE IF NOT EXISTS {partition} PARTITION OF queueapp_task_history"
        f" FOR VALUES FROM ('{day} 00:00+00') TO ('{day + dt.timedelta(days=1)} 00:00+00')"
    )
    for task_id in old_done:
        end_task(task_id, "SUCCESSFUL", finished_at=f"{day} 12:00+00")
    for task_id in old_failed:
        end_task(task_id, "FAILED", finished_at=timezone.now() - dt.timedelta(days=30))
    for task_id in new_done:
        end_task(task_id, "SUCCESSFUL")

    dry = run_manage("purge_tasks", "--older-than", "14d", "--dry-run")
    assert dry.stdout.strip() == "would delete tasks=7"
    only_failed = run_manage("purge_tasks", "--older-than", "14d", "--status", "failed", "--batch", "1")
    assert (
        only_failed.stdout.strip()
        == "dropped partitions=0 (about 0 tasks) deleted tasks=2 idempotency_keys=0 workers=0"
    )
    raw_conn.execute(f"ANALYZE {partition}")
    everything = run_manage("purge_tasks", "--older-than", "14d")
    assert (
        everything.stdout.strip()
        == "dropped partitions=1 (about 5 tasks) deleted tasks=0 idempotency_keys=0 workers=0"
    )
    assert partition not in store.history_partitions()
    assert sorted(models.Task.objects.values_list("id", flat=True)) == sorted(new_done + waiting)

    refused = run_manage("purge_tasks", "--older-than", "14d", "--status", "READY")
    assert refused.returncode != 0
    assert "only finished statuses" in refused.stderr
    assert "like 14d" in run_manage("purge_tasks", "--older-than", "two weeks").stderr


def test_purge_tasks_removes_old_worker_rows_but_keeps_those_running_tasks_still_name(
    raw_conn: psycopg.Connection,
) -> None:
    def worker(state: str, days_ago: float) -> models.Worker:
        made = make_worker()
        raw_conn.execute(
            "UPDATE queueapp_worker SET state = %s, last_heartbeat_at = now() - make_interval(days => %s),"
            " stopped_at = CASE WHEN %s IN ('STOPPED', 'LOST') THEN now() - make_interval(days => %s) END"
            " WHERE id = %s",
            [state, days_ago, state, days_ago, made.id],
        )
        return made

    old_stopped, old_lost, recent_stopped = worker("STOPPED", 20), worker("LOST", 20), worker("STOPPED", 1)
    alive = worker("ALIVE", 0)
    holding = make_worker()  # lost long ago with a task still RUNNING on it: the reaper needs the row
    tasks.add.enqueue(1, 1)
    store.claim_tasks(worker_id=holding.id, queues=["default"], limit=1)
    raw_conn.execute(
        "UPDATE queueapp_worker SET state = 'LOST', stopped_at = now() - interval '20 days' WHERE id = %s",
        [holding.id],
    )

    purged = run_manage("purge_tasks", "--older-than", "14d")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip().endswith("workers=2")
    remaining = set(models.Worker.objects.values_list("id", flat=True))
    assert remaining == {recent_stopped.id, alive.id, holding.id}
    assert old_stopped.id not in remaining
    assert old_lost.id not in remaining


def test_tasks_left_running_under_a_stopped_worker_are_reaped(raw_conn: psycopg.Connection) -> None:
    """A worker whose loop died on an error (or whose last writes failed at shutdown) still records
    itself STOPPED: its process is gone, and nobody else would ever take back what it held."""
    result = tasks.add.enqueue(1, 1)
    worker = make_worker()
    store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    assert store.set_worker_state(worker.id, "STOPPED")
    assert store.preview_reap(stale_after=30).tasks_requeued == 1
    assert store.reap_workers(stale_after=30, **REAP).tasks_requeued == 1
    task = models.Task.objects.get(id=int(result.id))
    assert (task.status, task.worker_id) == ("SCHEDULED", None)
    assert "was lost" in task.errors[-1]["message"]


@pytest.mark.parametrize("lost", [False, True], ids=["failed", "reaped"])
def test_the_backoff_of_a_task_retried_a_thousand_times_does_not_overflow(
    raw_conn: psycopg.Connection, lost: bool
) -> None:
    """2^1024 overflows float8: the statement failed, and with it every reap of the fleet."""
    result = tasks.add.using(max_attempts=5000).enqueue(1, 1)
    worker = make_worker()
    store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    raw_conn.execute("UPDATE queueapp_task_live SET attempts = 1100 WHERE id = %s", [int(result.id)])
    if lost:
        age_heartbeat(raw_conn, worker, 60)
        assert store.reap_workers(stale_after=30, backoff_base=1.0, backoff_max=60.0).tasks_requeued == 1
    else:
        outcome = store.fail_task(
            task_id=int(result.id),
            worker_id=worker.id,
            attempt=1100,
            error={"message": "boom"},
            backoff_base=1.0,
            backoff_max=60.0,
        )
        assert outcome is not None
    (wait,) = raw_conn.execute(
        "SELECT extract(epoch FROM run_after - now()) FROM queueapp_task_live WHERE id = %s", [int(result.id)]
    ).fetchone()
    assert 25 <= wait <= 61  # backoff_max, with jitter
