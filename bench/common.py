"""Shared set-up for benchmarks: a scratch database of their own on DATABASE_URL's server."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """Create database `name` on DATABASE_URL's server, set up Django on it, drop it afterwards."""
    base = os.environ.get("DATABASE_URL")
    if not base:
        sys.exit("DATABASE_URL is not set (make bench sets it to a throwaway cluster)")
    parts = urlsplit(base)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskqueue_project.settings")
    os.environ.setdefault("TASKQUEUE_IMPORTS", "bench.tasks")
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    try:
        yield url
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def worker_env(url: str, **extra: str) -> dict[str, str]:
    """Environment for `manage.py runworker` subprocesses against the scratch database."""
    return {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": "bench-only",
        "DJANGO_SETTINGS_MODULE": "taskqueue_project.settings",
        "TASKQUEUE_IMPORTS": "bench.tasks",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]
