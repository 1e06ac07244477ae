"""The scheduler in real worker processes: four workers, one tick each time, through kills and
restarts; a worker whose clock is wrong; unique keys under 100 concurrent HTTP submissions."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from queueapp import apikeys, models, schedules, store
from tests import tasks
from tests.helpers import FAST_ENV, ROOT, GunicornServer, WorkerProcess, database_url, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

Start = Callable[..., WorkerProcess]
SCHEDULER_ENV = {"TASKQUEUE_SCHEDULE_INTERVAL": "0.2", "TASKQUEUE_SCHEDULE_GRACE": "1"}


def every_second(start: dt.datetime, catch_up: str = models.CatchUp.ALL) -> models.Schedule:
    return models.Schedule.objects.create(
        name="tick",
        task_path=tasks.add.module_path,
        cron="* * * * * *",
        args=[1, 1],
        catch_up=catch_up,
        next_run_at=start,
    )


def whole_second_ahead(seconds: int) -> dt.datetime:
    return store.database_now().replace(microsecond=0) + dt.timedelta(seconds=seconds)


def ticks_between(schedule: models.Schedule, first: dt.datetime, last: dt.datetime) -> list[dt.datetime]:
    return list(
        schedule.ticks.filter(tick_at__gte=first, tick_at__lte=last)
        .order_by("tick_at")
        .values_list("tick_at", flat=True)
    )


def wait_for_tick(schedule: models.Schedule, tick: dt.datetime, *, message: str) -> None:
    wait_for(lambda: ticks_between(schedule, tick, tick), timeout=40, message=message)


def tick_tasks(schedule: models.Schedule, first: dt.datetime, last: dt.datetime) -> list[str | None]:
    keys = [schedules.tick_key(schedule.name, t) for t in ticks_between(schedule, first, last)]
    return list(models.Task.objects.filter(unique_key__in=keys).values_list("unique_key", flat=True))


def start_workers(workers: Start, count: int) -> list[WorkerProcess]:
    return [workers("--concurrency", "2", env=SCHEDULER_ENV) for _ in range(count)]


def test_four_workers_enqueue_a_per_second_schedule_exactly_once_per_tick(workers: Start) -> None:
    first = whole_second_ahead(2)
    last = first + dt.timedelta(seconds=9)
    schedule = every_second(first)
    start_workers(workers, 4)
    wait_for_tick(schedule, last, message="the tenth tick")
    ticks = ticks_between(schedule, first, last)
    assert ticks == [first + dt.timedelta(seconds=n) for n in range(10)]
    keys = tick_tasks(schedule, first, last)
    assert len(keys) == len(set(keys)) == 10
    assert models.ScheduleTick.objects.filter(schedule=schedule, tick_at__lt=first).count() == 0


def test_killed_and_restarted_workers_lose_no_tick_and_duplicate_none_under_catch_up_all(
    workers: Start,
) -> None:
    first = whole_second_ahead(2)
    schedule = every_second(first)
    running = start_workers(workers, 4)
    wait_for_tick(schedule, first + dt.timedelta(seconds=3), message="the fourth tick")
    for worker in running[:2]:
        worker.signal(signal.SIGKILL)
    wait_for_tick(schedule, first + dt.timedelta(seconds=5), message="the survivors to go on")
    for worker in running[2:]:
        worker.signal(signal.SIGKILL)
    down_until = store.database_now() + dt.timedelta(seconds=3)  # longer than the grace: ticks are missed
    wait_for(lambda: store.database_now() > down_until, timeout=10, message="three seconds with no worker")
    start_workers(workers, 2)
    last = down_until.replace(microsecond=0) + dt.timedelta(seconds=3)
    wait_for_tick(schedule, last, message="ticks after the restart")
    ticks = ticks_between(schedule, first, last)
    expected = int((last - first).total_seconds()) + 1
    assert ticks == [first + dt.timedelta(seconds=n) for n in range(expected)]
    keys = tick_tasks(schedule, first, last)
    assert len(keys) == len(set(keys)) == expected


def test_a_worker_whose_clock_is_ten_minutes_ahead_enqueues_ticks_at_the_database_times(
    tmp_path: Path, transactional_db: None
) -> None:
    first = whole_second_ahead(2)
    schedule = every_second(first)
    log = (tmp_path / "skewed.log").open("wb")
    env = {**os.environ, **FAST_ENV, **SCHEDULER_ENV, "CLOCK_OFFSET": "600", "DATABASE_URL": database_url(),
           "DJANGO_SETTINGS_MODULE": "tests.settings"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "tests/skewed_clock.py", "runworker", "--concurrency", "1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        third = first + dt.timedelta(seconds=2)
        wait_for_tick(schedule, third, message="three ticks")
        now = store.database_now()
    finally:
        process.kill()
        process.wait(10)
        log.close()
    output = (tmp_path / "skewed.log").read_text()
    skewed = dt.datetime.fromisoformat(output.split("skewed_clock now=")[1].split()[0])
    assert skewed - now > dt.timedelta(minutes=9)  # the process's own clock was off indeed
    ticks = list(schedule.ticks.order_by("tick_at"))
    assert [t.tick_at for t in ticks[:3]] == [first + dt.timedelta(seconds=n) for n in range(3)]
    assert all(t.tick_at <= now for t in ticks)  # nothing enqueued from ten minutes ahead
    assert all(dt.timedelta(0) <= t.enqueued_at - t.tick_at < dt.timedelta(seconds=5) for t in ticks)


@pytest.fixture
def server(tmp_path: Path, transactional_db: None) -> Iterator[GunicornServer]:
    gunicorn = GunicornServer(log_dir=tmp_path)
    yield gunicorn
    gunicorn.stop()


def submit(port: int, key: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "POST", "/api/tasks", body=json.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_100_concurrent_http_submissions_of_one_unique_key_make_one_task(server: GunicornServer) -> None:
    key = apikeys.create_api_key("unique")[1]
    start = threading.Barrier(100)
    answers: list[tuple[int, object]] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        start.wait()
        status, payload = submit(
            server.port, key, {"task": "add", "args": [n, n], "unique_key": "nightly-export"}
        )
        with lock:
            answers.append((status, payload["id"]))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert len(answers) == 100
    assert sorted(status for status, _ in answers) == [200] * 99 + [201]
    task = models.Task.objects.get(unique_key="nightly-export")
    assert {task_id for _, task_id in answers} == {task.id}
    listed = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    listed.request("GET", "/api/tasks?unique_key=nightly-export", headers={"Authorization": f"Bearer {key}"})
    page = json.loads(listed.getresponse().read())
    assert [item["id"] for item in page["tasks"]] == [task.id]
    assert page["tasks"][0]["unique_key"] == "nightly-export"
    # Finished, the key is free again; asked with unique_for, a recent finish still holds it.
    worker = models.Worker.objects.create(hostname="t", pid=1, queues=["default"], concurrency=1)

    def finish_one() -> None:
        (row,) = store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
        store.finish_task(task_id=row.id, worker_id=worker.id, attempt=1, return_value_json="2")

    finish_one()
    status, created = submit(
        server.port, key, {"task": "add", "args": [1, 1], "unique_key": "nightly-export"}
    )
    assert status == 201
    assert created["id"] != task.id
    finish_one()
    body = {"task": "add", "args": [1, 1], "unique_key": "nightly-export", "unique_for": 3600}
    status, again = submit(server.port, key, body)
    assert (status, again["id"]) == (200, created["id"])
