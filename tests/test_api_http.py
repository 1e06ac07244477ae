"""The API through gunicorn on loopback: concurrency that an in-process client cannot produce."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from queueapp import apikeys, models
from tests.helpers import GunicornServer, end_task

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def server(tmp_path: Path, transactional_db: None) -> Iterator[GunicornServer]:
    gunicorn = GunicornServer(log_dir=tmp_path)
    yield gunicorn
    gunicorn.stop()


def test_100_concurrent_submissions_with_one_idempotency_key_create_exactly_one_task(
    server: GunicornServer,
) -> None:
    key = apikeys.create_api_key("concurrency")[1]
    body = json.dumps({"task": "add", "args": [20, 22]})
    start = threading.Barrier(100)
    answers: list[tuple[int, int]] = []
    lock = threading.Lock()

    def submit() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        start.wait()
        conn.request(
            "POST",
            "/api/tasks",
            body=body,
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Idempotency-Key": "pay-42",
            },
        )
        response = conn.getresponse()
        payload = json.loads(response.read())
        with lock:
            answers.append((response.status, payload["id"]))

    threads = [threading.Thread(target=submit) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)

    assert len(answers) == 100
    assert models.Task.objects.count() == 1
    assert sorted(status for status, _ in answers) == [200] * 99 + [201]
    assert {task_id for _, task_id in answers} == {models.Task.objects.get().id}


def test_concurrent_retries_make_one_new_run(server: GunicornServer) -> None:
    from tests import tasks

    key = apikeys.create_api_key("retries")[1]
    task_id = int(tasks.add.enqueue(1, 2).id)
    end_task(task_id, "FAILED", attempts=3)
    start = threading.Barrier(20)
    statuses: list[int] = []

    def retry() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        start.wait()
        conn.request("POST", f"/api/tasks/{task_id}/retry", headers={"Authorization": f"Bearer {key}"})
        statuses.append(conn.getresponse().status)

    threads = [threading.Thread(target=retry) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(statuses) == [200] + [409] * 19
    row = models.Task.objects.get(id=task_id)
    assert (row.status, row.attempts, row.max_attempts) == ("READY", 3, 6)
