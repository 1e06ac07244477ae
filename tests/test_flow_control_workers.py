"""Flow control with real worker processes (4 processes x 8 threads): concurrency limits and keys
proven by a trigger-fed audit of RUNNING tasks, a rate limit by started_at, pause under load; the
circuit breaker counting attempts lost with SIGKILLed workers."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import psycopg
import pytest

from queueapp import models, store
from tests import tasks
from tests.conftest import make_worker
from tests.helpers import WorkerProcess, wait_for
from workers.reaper import Reaper

pytestmark = pytest.mark.django_db(transaction=True)

FLEET = ("--processes", "4", "--concurrency", "8")

# Every change in and out of RUNNING moves a counter per queue and per concurrency key. The counter's
# row lock orders the changes as their transactions commit, so `peak` is the most RUNNING tasks any
# committed state ever had. (The trigger serialises finishes too: fine for an audit.)
AUDIT = """
CREATE TABLE flow_audit (scope text PRIMARY KEY, running int NOT NULL, peak int NOT NULL);
CREATE FUNCTION flow_audit_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE s text;
BEGIN
  -- The queue's settings row first, as the flow-controlled claim takes it: a finish that took the
  -- counters first would deadlock with a claim that holds the queue and waits for the counters.
  PERFORM 1 FROM queueapp_queuecontrol WHERE name = OLD.queue_name FOR UPDATE;
  IF TG_OP <> 'INSERT' AND OLD.status = 'RUNNING' THEN
    FOREACH s IN ARRAY array_remove(ARRAY[OLD.queue_name, 'key:' || OLD.concurrency_key], NULL) LOOP
      UPDATE flow_audit SET running = running - 1 WHERE flow_audit.scope = s;
    END LOOP;
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.status = 'RUNNING' THEN
    FOREACH s IN ARRAY array_remove(ARRAY[NEW.queue_name, 'key:' || NEW.concurrency_key], NULL) LOOP
      INSERT INTO flow_audit VALUES (s, 1, 1) ON CONFLICT ON CONSTRAINT flow_audit_pkey
      DO UPDATE SET running = flow_audit.running + 1,
                    peak = greatest(flow_audit.peak, flow_audit.running + 1);
    END LOOP;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER flow_audit AFTER UPDATE OR DELETE ON queueapp_task_live
FOR EACH ROW EXECUTE FUNCTION flow_audit_count();
"""


@pytest.fixture
def audit(raw_conn: psycopg.Connection) -> Iterator[Callable[[], dict[str, tuple[int, int]]]]:
    raw_conn.execute(AUDIT)

    def read() -> dict[str, tuple[int, int]]:
        rows = raw_conn.execute("SELECT scope, running, peak FROM flow_audit").fetchall()
        return {scope: (running, peak) for scope, running, peak in rows}

    yield read
    raw_conn.execute("DROP TABLE flow_audit; DROP FUNCTION flow_audit_count() CASCADE")


def drained(queue: str) -> bool:
    return not models.LiveTask.objects.filter(queue_name=queue).exists()


def test_a_queue_limited_to_3_never_runs_more_than_3(audit, workers: Callable[..., WorkerProcess]) -> None:
    models.QueueControl.objects.create(name="reports", concurrency_limit=3)
    tasks.sleep_then_return.using(queue_name="reports").enqueue_many(((0.005,), {}) for _ in range(2000))
    workers(*FLEET, "--queues", "reports,default")

    wait_for(lambda: drained("reports"), timeout=300, message="2,000 tasks done")
    assert audit()["reports"] == (0, 3)  # the limit was reached, never passed
    assert models.Task.objects.filter(queue_name="reports", status="SUCCESSFUL").count() == 2000


def test_50_keys_with_one_at_a_time_each(audit, workers: Callable[..., WorkerProcess]) -> None:
    task = tasks.sleep_then_return.using(queue_name="reports")
    for key in range(50):
        task.using(concurrency_key=f"customer-{key}").enqueue_many(((0.005,), {}) for _ in range(40))
    workers(*FLEET, "--queues", "reports")

    wait_for(lambda: drained("reports"), timeout=300, message="2,000 keyed tasks done")
    counted = audit()
    assert {scope: peak for scope, (_, peak) in counted.items() if scope.startswith("key:")} == {
        f"key:customer-{key}": 1 for key in range(50)
    }
    assert counted["reports"][1] > 1  # different keys did run side by side


def test_a_rate_limit_of_20_per_second_and_an_unlimited_queue_beside_it(
    workers: Callable[..., WorkerProcess],
) -> None:
    models.QueueControl.objects.create(name="reports", rate_limit=20, rate_period=1.0)
    tasks.add.using(queue_name="reports").enqueue_many(((i, i), {}) for i in range(620))
    tasks.add.enqueue_many(((i, i), {}) for i in range(3000))
    workers(*FLEET, "--queues", "reports,default")

    wait_for(lambda: drained("default"), timeout=120, message="the unlimited queue drained")
    rated_by_then = models.Task.objects.filter(queue_name="reports", status="SUCCESSFUL").count()
    wait_for(lambda: drained("reports"), timeout=120, message="the rate-limited queue drained")
    per_second = store_starts_per_second("reports")
    steady = per_second[1:-1]  # the first and last seconds are partial
    assert len(steady) >= 28
    # Never over the rate (a start at a second's edge may count in the next: 21); and the queue kept
    # to it, but for a loaded machine's stall here and there (a bucket that is full refills nothing,
    # so a late claim is a start lost: a CI run once saw 18 in one second, 19.9 on average).
    assert all(15 <= n <= 21 for n in steady), f"starts per second: {per_second}"
    assert sum(steady) / len(steady) >= 19, f"starts per second: {per_second}"
    # The unlimited queue was not held behind the limited one: it was done in a fraction of the
    # 30 s the limited queue takes.
    assert rated_by_then < 300


def store_starts_per_second(queue: str, key: str | None = None) -> list[int]:
    """Starts in each whole second of the queue's (or of one key's) tasks, seconds without any left out."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM queueapp_task WHERE queue_name = %s"
            " AND (%s::text IS NULL OR concurrency_key = %s)"
            " GROUP BY date_trunc('second', started_at) ORDER BY date_trunc('second', started_at)",
            [queue, key, key],
        )
        return [n for (n,) in cursor.fetchall()]


def test_a_rate_limit_per_key_holds_each_key_to_its_own_rate_and_no_other_key(
    workers: Callable[..., WorkerProcess],
) -> None:
    models.QueueControl.objects.create(
        name="reports", key_concurrency=100, key_rate_limit=4, key_rate_period=1.0
    )
    task = tasks.add.using(queue_name="reports")
    for key in ("a", "b"):  # 12 s each at 4 a second
        task.using(concurrency_key=key).enqueue_many(((i, i), {}) for i in range(48))
    task.using(concurrency_key="c").enqueue_many(((i, i), {}) for i in range(3))
    workers(*FLEET, "--queues", "reports")

    wait_for(lambda: drained("reports"), timeout=120, message="the keyed tasks done")
    for key in ("a", "b"):
        per_second = store_starts_per_second("reports", key)
        steady = per_second[1:-1]  # the first and last seconds are partial
        assert len(steady) >= 9, per_second
        assert all(3 <= n <= 5 for n in steady), f"starts per second of {key}: {per_second}"
    started = models.Task.objects.filter(queue_name="reports").order_by("started_at")
    first = started.first()
    last_of_c = started.filter(concurrency_key="c").last()
    assert first is not None
    assert last_of_c is not None
    assert first.started_at is not None
    assert last_of_c.started_at is not None
    # c was held to its own rate only (3 starts: about half a second), not behind a and b (12 s).
    assert (last_of_c.started_at - first.started_at).total_seconds() < 3


def test_pause_under_load_stops_claims_at_commit_and_resume_wakes_workers(
    raw_conn: psycopg.Connection, workers: Callable[..., WorkerProcess]
) -> None:
    tasks.sleep_then_return.using(queue_name="reports").enqueue_many(((0.02,), {}) for _ in range(3000))
    workers(*FLEET, "--queues", "reports", "--poll-interval", "60")  # only a NOTIFY can wake them soon
    done = models.Task.objects.filter(status="SUCCESSFUL")
    wait_for(lambda: done.count() > 200, timeout=60, message="under load")

    store.set_paused("reports", True)
    (paused_at,) = raw_conn.execute("SELECT clock_timestamp()").fetchone()
    running = models.LiveTask.objects.filter(status="RUNNING")
    wait_for(lambda: not running.exists(), timeout=30, message="the tasks claimed before the pause done")
    started = models.Task.objects.filter(started_at__isnull=False)
    assert not started.filter(started_at__gt=paused_at).exists()  # no claim after the pause committed
    waiting = models.LiveTask.objects.filter(status="READY").count()
    assert waiting > 1000

    store.set_paused("reports", False)
    (resumed_at,) = raw_conn.execute("SELECT clock_timestamp()").fetchone()
    wait_for(lambda: started.filter(started_at__gt=resumed_at).exists(), timeout=10, message="resumed")


def test_attempts_lost_with_their_worker_open_the_breaker(
    sessions: list[store.WorkerSession], workers: Callable[..., WorkerProcess]
) -> None:
    """A worker SIGKILLed mid-task three times: each lost attempt, taken back by the reaper, is a
    failed attempt for the queue's breaker, which opens at the next claim."""
    models.QueueControl.objects.create(
        name="reports", breaker_threshold=0.5, breaker_min_attempts=3, breaker_cooloff=600
    )
    tasks.sleep_then_return.using(queue_name="reports").enqueue_many(((60,), {}) for _ in range(4))
    reaper = Reaper(stale_after=30, backoff_base=600, backoff_max=600)
    running = models.LiveTask.objects.filter(status="RUNNING")
    for kill in range(3):
        doomed = workers("--queues", "reports", "--concurrency", "1", "--prefetch", "0")
        wait_for(running.exists, timeout=30, message=f"a task running on worker {kill + 1}")
        doomed.signal(signal.SIGKILL)
        doomed.wait(10)
        outcome = reaper.run_once([models.Worker.objects.get(pid=doomed.pid).id])
        assert outcome is not None
        assert outcome.tasks_requeued == 1
    assert models.BreakerEvent.objects.filter(queue_name="reports", failed=True).count() == 3

    session = store.WorkerSession(worker_id=make_worker(["reports"]).id, queues=["reports"])
    sessions.append(session)
    assert session.round([], 1, view=session.flow_view())[1] == []  # the fourth task stays READY
    assert session.breaker_changes == [store.BreakerChange("reports", "open", 3, 3)]


def test_a_worker_whose_listener_cannot_connect_still_sees_flow_control_changes(
    workers: Callable[..., WorkerProcess],
) -> None:
    """Its listener retries for ever (a firewalled direct host behind a working pooler): the worker
    must look at the settings itself, or a pause and resume (which fence its plain claim until it
    looks again) would leave it claiming nothing while it stays ALIVE."""
    worker = workers(
        "--concurrency", "1", env={"TASKQUEUE_LISTEN_DATABASE_URL": "postgres://postgres@127.0.0.1:9/none"}
    )
    wait_for(lambda: models.Worker.objects.filter(state="ALIVE").exists(), timeout=30, message="registered")
    store.set_paused("default", True)
    store.set_paused("default", False)
    result = tasks.add.enqueue(2, 3)
    wait_for(
        lambda: models.Task.objects.get(id=int(result.id)).status == "SUCCESSFUL",
        timeout=40,
        message=lambda: f"the task to run; worker log:\n{worker.output()}",
    )
