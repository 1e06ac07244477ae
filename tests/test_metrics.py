"""/metrics on the web service and on workers agree with the database."""

from __future__ import annotations

import datetime as dt
import http.client
import signal
import socket
from collections.abc import Callable

import psycopg
import pytest
from django.test import Client, override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from queueapp import models
from tests import tasks
from tests.helpers import WorkerProcess, end_task, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    return conn.getresponse().read().decode()


def test_web_metrics_are_read_from_the_database_at_scrape_time() -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(5))
    tasks.send_email.enqueue("a@example.com")
    tasks.add.using(run_after=timezone.now() + dt.timedelta(hours=1)).enqueue(9, 9)
    end_task(models.Task.objects.order_by("id")[0].id, "FAILED")

    values = samples(Client().get("/metrics").content.decode())

    assert values[("taskqueue_tasks", (("queue", "default"), ("status", "READY")))] == 4
    assert values[("taskqueue_tasks", (("queue", "default"), ("status", "SCHEDULED")))] == 1
    assert values[("taskqueue_tasks", (("queue", "emails"), ("status", "READY")))] == 1
    # Live tasks only: finished ones are counted per minute (the console) and by the workers' counters.
    assert ("taskqueue_tasks", (("queue", "default"), ("status", "FAILED"))) not in values
    assert values[("taskqueue_oldest_ready_age_seconds", (("queue", "default"),))] >= 0
    assert values[("taskqueue_oldest_unstaged_age_seconds", (("queue", "default"),))] == 0  # not due yet
    assert values[("taskqueue_workers", (("state", "alive"),))] == 0


def test_a_due_task_left_scheduled_shows_in_the_unstaged_age(raw_conn: psycopg.Connection) -> None:
    """What TaskQueueNothingStaged alerts on: a due task that no stager made READY."""
    task_id = int(tasks.add.using(run_after=timezone.now() + dt.timedelta(hours=1)).enqueue(9, 9).id)
    raw_conn.execute(
        "UPDATE queueapp_task_live SET run_after = now() - interval '10 minutes' WHERE id = %s", [task_id]
    )
    values = samples(Client().get("/metrics").content.decode())
    assert 600 <= values[("taskqueue_oldest_unstaged_age_seconds", (("queue", "default"),))] < 700


def test_web_metrics_can_require_a_token() -> None:
    from django.conf import settings

    with override_settings(TASKQUEUE={**settings.TASKQUEUE, "METRICS_TOKEN": "s3cret"}):
        assert Client().get("/metrics").status_code == 401
        assert Client(HTTP_AUTHORIZATION="Bearer s3cret").get("/metrics").status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["1", "2"])
def test_worker_metrics_agree_with_the_database(
    workers: Callable[..., WorkerProcess], processes: str
) -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(40))
    tasks.flaky.using(max_attempts=2).enqueue_many(((i,), {}) for i in range(3))
    port = free_port()
    worker = workers("--processes", processes, "--concurrency", "4", "--metrics-port", str(port))

    def settled() -> bool:
        return not models.Task.objects.exclude(status__in=["SUCCESSFUL", "FAILED"]).exists()

    wait_for(settled, timeout=60, message="every task to finish")
    values = wait_for(lambda: _scrape_or_none(port), timeout=10, message="the metrics port to answer")

    finished = {
        labels: value for (name, labels), value in values.items() if name == "taskqueue_tasks_finished_total"
    }
    assert (
        finished[(("outcome", "SUCCESSFUL"), ("task", "tests.tasks.add"))]
        == models.Task.objects.filter(status="SUCCESSFUL").count()
    )
    assert finished[(("outcome", "FAILED"), ("task", "tests.tasks.flaky"))] == 3
    assert finished[(("outcome", "retry"), ("task", "tests.tasks.flaky"))] == 3
    assert values[("taskqueue_task_retries_total", (("task", "tests.tasks.flaky"),))] == 3
    assert values[("taskqueue_pickup_latency_seconds_count", ())] == 43  # first attempts only
    assert values[("taskqueue_task_duration_seconds_count", (("task", "tests.tasks.add"),))] == 40
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def _scrape_or_none(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        return samples(scrape(port))
    except OSError:
        return None
