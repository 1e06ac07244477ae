"""Fixtures over the real test database: raw connections, workers, and a notification listener."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection

from queueapp import models


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
def listener(transactional_db: None) -> Iterator[psycopg.Connection]:
    """An autocommit connection LISTENing on the queue's channel."""
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute("LISTEN taskqueue")
        yield conn


def collect_until_sentinel(listener: psycopg.Connection, raw_conn: psycopg.Connection) -> list[str]:
    """Payloads received on 'taskqueue' before a sentinel sent now (delivery is in commit order)."""
    raw_conn.execute("SELECT pg_notify('taskqueue', 'sentinel')")
    payloads = []
    for notify in listener.notifies(timeout=10):
        if notify.payload == "sentinel":
            return payloads
        payloads.append(notify.payload)
    raise AssertionError(f"sentinel notification not received within 10 s; got {payloads}")


def make_worker(queues: list[str] | None = None) -> models.Worker:
    return models.Worker.objects.create(
        id=uuid.uuid4(), hostname="test", pid=1, queues=queues or ["default"], concurrency=4
    )
