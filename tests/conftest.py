"""Fixtures over the real test database: raw connections, workers, and a notification listener."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from queueapp import models, store
from tests.helpers import WorkerProcess


def conninfo() -> str:
    """Connection string of the test database Django is using."""
    s = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=s["NAME"],
        user=s["USER"] or None,
        password=s["PASSWORD"] or None,
        host=s["HOST"] or None,
        port=str(s["PORT"]) if s["PORT"] else None,
    )


@pytest.fixture
def raw_conn(transactional_db: None) -> Iterator[psycopg.Connection]:
    """A second autocommit connection, independent of Django's."""
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def sessions(transactional_db: None) -> Iterator[list[store.WorkerSession]]:
    """Worker sessions a test makes (append them): closed at teardown."""
    made: list[store.WorkerSession] = []
    yield made
    for session in made:
        session.close()


@pytest.fixture
def listener(transactional_db: None) -> Iterator[psycopg.Connection]:
    """An autocommit connection LISTENing on the queue's channel, for a worker that waits for work
    on the queues the tests use (enqueues notify only while one does)."""
    waiting_worker(["default", "emails"])
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute("LISTEN taskqueue")
        yield conn


def collect_until_sentinel(listener: psycopg.Connection, raw_conn: psycopg.Connection) -> list[str]:
    """The queues of the notifications received on 'taskqueue' before a sentinel sent now (delivery
    is in commit order); a named wake-up counts by its queue."""
    return [wake.queue for wake in wakes_until_sentinel(listener, raw_conn)]


def wakes_until_sentinel(listener: psycopg.Connection, raw_conn: psycopg.Connection) -> list[store.Wake]:
    """The notifications received on 'taskqueue' before a sentinel sent now, as queue and named worker."""
    raw_conn.execute("SELECT pg_notify('taskqueue', 'sentinel')")
    wakes = []
    for notify in listener.notifies(timeout=10):
        if notify.payload == "sentinel":
            return wakes
        wakes.append(store.parse_wake(notify.payload))
    raise AssertionError(f"sentinel notification not received within 10 s; got {wakes}")


def waiting_worker(queues: list[str]) -> models.Worker:
    """An ALIVE worker row marked waiting for work on queues (as mark_worker_waiting leaves it)."""
    worker = make_worker(queues)
    models.Worker.objects.filter(id=worker.id).update(waiting=True)
    return worker


def make_worker(queues: list[str] | None = None) -> models.Worker:
    return models.Worker.objects.create(
        id=uuid.uuid4(), hostname="test", pid=1, queues=queues or ["default"], concurrency=4
    )


@pytest.fixture
def workers(tmp_path: object, transactional_db: None) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes; each is killed at teardown if still running."""
    started: list[WorkerProcess] = []
    log_dir = Path(os.environ.get("TEST_ARTIFACTS", str(tmp_path)))
    log_dir.mkdir(parents=True, exist_ok=True)

    def start(*args: str, **kwargs: object) -> WorkerProcess:
        worker = WorkerProcess(*args, log_dir=log_dir, **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def side_effects(raw_conn: psycopg.Connection) -> psycopg.Connection:
    """A table with a unique key that tasks.record writes: a second execution would collide."""
    raw_conn.execute(
        "CREATE TABLE IF NOT EXISTS test_side_effect"
        " (seq bigserial, key text PRIMARY KEY, at timestamptz DEFAULT now())"
    )
    raw_conn.execute("TRUNCATE test_side_effect")
    return raw_conn
