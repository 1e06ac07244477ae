"""`make demo`: every state without writing code, a message saying where to watch, and in DEBUG
only the slow and failing demo tasks open to HTTP for the curl experiments."""

from __future__ import annotations

import http.client
import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from django.test import Client

from queueapp import apikeys, models
from tests.helpers import GunicornServer, WorkerProcess, run_manage, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

DEMO = "taskqueue_project.demo_tasks."


def test_the_demo_shows_every_outcome_and_says_where_to_watch(
    workers: Callable[..., WorkerProcess],
) -> None:
    enqueued = run_manage("enqueue_demo", "--count", "1", "--slow-seconds", "0.5")
    assert enqueued.returncode == 0, enqueued.stderr
    for where in (
        "/admin/queueapp/task/",
        "/admin/queueapp/task/overview/",
        "task_finished",
        "createsuperuser",
    ):
        assert where in enqueued.stdout, where
    assert enqueued.stdout.count("enqueued id=") == 6

    worker = workers("--concurrency", "4")

    def outcome(name: str) -> models.Task:
        return models.Task.objects.get(task_path=DEMO + name)

    wait_for(
        lambda: models.Task.objects.filter(status__in=["SUCCESSFUL", "FAILED"]).count() == 6,
        timeout=60,
        message="every demo task to finish",
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    failing = outcome("always_fails")
    assert (failing.status, failing.attempts, len(failing.errors)) == ("FAILED", 3, 3)
    assert failing.errors[0]["exception_class_path"] == "builtins.ConnectionError"
    retried = outcome("retry_then_succeed")
    assert (retried.status, retried.attempts, retried.return_value) == (
        "SUCCESSFUL",
        3,
        "succeeded on attempt 3",
    )
    slow = outcome("slow")
    assert (slow.status, slow.return_value) == ("SUCCESSFUL", "slept 0.5 s")
    assert slow.finished_at is not None
    assert slow.started_at is not None
    assert (slow.finished_at - slow.started_at).total_seconds() >= 0.5


def test_slow_and_failing_demo_tasks_take_http_submissions_in_debug_only(tmp_path: Path) -> None:
    key = apikeys.create_api_key("demo")[1]
    production = Client(HTTP_AUTHORIZATION=f"Bearer {key}").post(
        "/api/tasks", data=json.dumps({"task": "demo-slow", "args": [1]}), content_type="application/json"
    )
    assert production.status_code == 422  # this test process runs with DEBUG off
    assert production.json()["error"] == "invalid_request"

    server = GunicornServer(log_dir=tmp_path, env={"DEBUG": "1"})
    try:
        for name, body in [
            ("demo-slow", {"args": [30]}),
            ("demo-always-fails", {}),
            ("demo-retry-then-succeed", {"kwargs": {"failures": 1}}),
        ]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
            conn.request(
                "POST",
                "/api/tasks",
                body=json.dumps({"task": name, **body}),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            assert response.status == 201, (name, response.read(), server.output())
    finally:
        server.stop()
    assert models.Task.objects.filter(task_path__startswith=DEMO).count() == 3
