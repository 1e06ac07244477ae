"""The landing page, the unauthenticated probes (/healthz, /readyz) and /api/health's verdict,
against the real database, and through gunicorn against an unreachable or unmigrated one."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from django.test import Client
from django.utils import timezone

from queueapp import apikeys
from tests import tasks
from tests.conftest import conninfo, make_worker
from tests.helpers import ROOT, GunicornServer, database_url, run_manage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client() -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {apikeys.create_api_key('tests')[1]}")


def get(port: int, path: str, **headers: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def compose_web_healthcheck(port: int) -> int:
    """Run docker-compose.yml's health check of the web service against a server on port."""
    test = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["web"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    assert "/readyz" in test[-1]
    argv = [sys.executable, *(arg.replace("localhost:8000", f"127.0.0.1:{port}") for arg in test[2:])]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_the_landing_page_links_the_console_the_overview_the_api_docs_and_metrics() -> None:
    response = Client().get("/")
    assert response.status_code == 200
    html = response.content.decode()
    for href in ("/admin/", "/admin/queueapp/task/overview/", "/api/docs", "/metrics", "/healthz", "/readyz"):
        assert f'href="{href}"' in html, href
    assert Client().get("/api/docs").status_code == 200  # the docs page needs no key to read


def test_probes_need_no_key_and_say_ok_when_ready() -> None:
    anonymous = Client()
    assert (anonymous.get("/healthz").status_code, anonymous.get("/healthz").json()) == (
        200,
        {"status": "ok"},
    )
    ready = anonymous.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok", "reasons": []})
    assert "no-cache" in ready["Cache-Control"]


def test_health_is_healthy_with_a_live_worker_on_every_queue_with_work(client: Client) -> None:
    make_worker(["default", "emails"])
    tasks.add.enqueue(1, 2)
    tasks.send_email.enqueue("ada@example.com")
    health = client.get("/api/health").json()
    assert (health["status"], health["reasons"], health["live_workers"]) == ("healthy", [], 1)
    assert health["pending"]["READY"] == 2


def test_health_is_degraded_when_ready_tasks_have_no_live_worker_listening(client: Client) -> None:
    make_worker(["default"])
    tasks.send_email.enqueue("ada@example.com")
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["reasons"] == [
        "queue 'emails' has 1 READY task(s) and no live worker listening on it"
    ]


def test_health_is_degraded_when_a_due_task_stays_scheduled_with_nobody_staging_it(
    client: Client, raw_conn: psycopg.Connection
) -> None:
    """The symptom of a fleet without a housekeeper (its stager): due tasks left SCHEDULED. A task
    deferred to later, or due for less than the limit, is not one."""
    make_worker(["default"])
    later = timezone.now() + dt.timedelta(hours=1)
    overdue, recent, _ = (int(tasks.add.using(run_after=later).enqueue(n, n).id) for n in range(3))
    assert client.get("/api/health").json()["status"] == "healthy"
    raw_conn.execute(
        "UPDATE queueapp_task_live SET run_after = now() - interval '10 minutes' WHERE id = %s", [overdue]
    )
    raw_conn.execute(
        "UPDATE queueapp_task_live SET run_after = now() - interval '1 minute' WHERE id = %s", [recent]
    )
    health = client.get("/api/health").json()
    assert (health["status"], health["pending"]["SCHEDULED"]) == ("degraded", 3)
    (reason,) = health["reasons"]
    assert reason.startswith("queue 'default': a deferred or retrying task has been due for 60")
    assert "still SCHEDULED (more than TASKQUEUE_HEALTH_MAX_READY_AGE=300 s)" in reason
    assert "housekeeper" in reason


def test_health_is_degraded_when_the_oldest_ready_task_waited_too_long(
    client: Client, raw_conn: psycopg.Connection
) -> None:
    make_worker(["default"])
    task_id = int(tasks.add.enqueue(1, 2).id)
    raw_conn.execute(
        "UPDATE queueapp_task_live SET run_after = now() - interval '10 minutes' WHERE id = %s", [task_id]
    )
    health = client.get("/api/health").json()  # TASKQUEUE_HEALTH_MAX_READY_AGE: 300 s by default
    assert health["status"] == "degraded"
    (reason,) = health["reasons"]
    assert reason.startswith("queue 'default': the oldest READY task has waited 60")
    assert "more than TASKQUEUE_HEALTH_MAX_READY_AGE=300 s" in reason


def test_health_is_degraded_while_a_dead_worker_is_not_reaped(
    client: Client, raw_conn: psycopg.Connection
) -> None:
    make_worker(["default"])
    dead = make_worker(["default"])
    raw_conn.execute(
        "UPDATE queueapp_worker SET last_heartbeat_at = now() - interval '5 minutes' WHERE id = %s", [dead.id]
    )
    health = client.get("/api/health").json()
    assert health["status"] == "degraded"
    assert "1 worker(s) stopped beating" in health["reasons"][0]


@pytest.fixture
def unmigrated_url(transactional_db: None) -> Iterator[str]:
    """An empty database next to the test database: reachable, nothing migrated."""
    name = f"{psycopg.conninfo.conninfo_to_dict(conninfo())['dbname']}_unmigrated"
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield database_url().rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_readyz_is_503_until_migrations_are_applied(unmigrated_url: str, tmp_path: Path) -> None:
    server = GunicornServer(log_dir=tmp_path, url=unmigrated_url)
    try:
        status, body = get(server.port, "/readyz")
        assert status == 503, server.output()
        assert body["status"] == "unavailable"
        assert body["reasons"][0].startswith("migrations not applied: ")
        assert "(run manage.py migrate)" in body["reasons"][0]
        assert get(server.port, "/healthz") == (200, {"status": "ok"})
        assert compose_web_healthcheck(server.port) != 0

        migrated = run_manage("migrate", "--noinput", url=unmigrated_url)
        assert migrated.returncode == 0, migrated.stderr
        assert get(server.port, "/readyz") == (200, {"status": "ok", "reasons": []})
        assert compose_web_healthcheck(server.port) == 0
    finally:
        server.stop()


def test_with_the_database_unreachable_healthz_answers_readyz_and_health_say_why(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    server = GunicornServer(log_dir=tmp_path, url=f"postgres://postgres@127.0.0.1:{closed_port}/nowhere")
    try:
        assert get(server.port, "/healthz") == (200, {"status": "ok"})
        status, body = get(server.port, "/readyz")
        assert (status, body["status"]) == (503, "unavailable"), server.output()
        assert body["reasons"][0].startswith("database unreachable: ")
        status, health = get(server.port, "/api/health", Authorization="Bearer tq_000000000000_unverifiable")
        assert (status, health["status"], health["database"]) == (503, "unhealthy", "unavailable")
        assert health["reasons"][0].startswith("database unreachable: ")
        assert get(server.port, "/api/health")[0] == 401  # still no answer without a key at all
        assert compose_web_healthcheck(server.port) != 0
    finally:
        server.stop()
