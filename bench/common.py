"""Shared set-up for benchmarks: a scratch database of their own on DATABASE_URL's server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@contextmanager
def rolled_back(conn: psycopg.Connection) -> Iterator[None]:
    """A transaction rolled back past psycopg, which forgets (and deallocates) its prepared
    statements on a ROLLBACK. A worker's rounds commit, so its statements stay prepared and their
    plans cached; a benchmark of them that rolls back must keep them too, or every claim it times
    is parsed and planned afresh (the flow-controlled claims measured 1.6-2.7x the plain claim so,
    against 0.9-1.3x kept: docs/benchmarks.md)."""
    conn.execute("BEGIN", prepare=False)
    try:
        yield
    finally:
        conn.pgconn.exec_(b"ROLLBACK")


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


def checkout_database(base_url: str, name: str, checkout: Path, *, extensions: tuple[str, ...] = ()) -> str:
    """A fresh database `name` on base_url's server, with these extensions, migrated by checkout (a
    baseline's schema is its own); returns its URL."""
    parts = urlsplit(base_url)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(url, autocommit=True) as conn:
        for extension in extensions:
            conn.execute(f"CREATE EXTENSION {extension}")
    manage = [sys.executable, "manage.py", "migrate", "--verbosity", "0"]
    subprocess.run(manage, cwd=checkout, env=worker_env(url), check=True)
    return url


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass(frozen=True)
class Figure:
    """One line of the suite's table: a figure, its ceiling from the same run, the ratio, the target."""

    what: str
    figure: str
    ceiling: str
    ratio: str
    target: str
    met: bool


def rate_figure(
    what: str,
    ours: float,
    ceiling: float,
    ceiling_label: str,
    *,
    at_least: float | None,
    ratio: float | None = None,
) -> Figure:
    """A throughput (tasks/s) against its ceiling: met when the ratio (ours/ceiling unless measured
    otherwise) is at least at_least (if any)."""
    ratio = ours / ceiling if ratio is None else ratio
    return Figure(
        what,
        f"{ours:,.0f} tasks/s",
        f"{ceiling:,.0f} tasks/s ({ceiling_label})",
        f"{ratio:.1%}",
        f">= {at_least:.0%}" if at_least is not None else "-",
        at_least is None or ratio >= at_least,
    )


def clear_tasks() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE queueapp_task_live, queueapp_task_history")


def wait_for(condition: Callable[[], object], *, timeout: float, what: str) -> None:
    """Poll condition until it is true; exit with what was awaited after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def scalar(sql: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql)
        return int(cursor.fetchone()[0])


def wait_waiting(processes: int) -> None:
    """Until that many worker processes wait for work (started up, registered, marked waiting): a
    supervisor's children have no LISTEN connection of their own (its one listener wakes them)."""
    wait_for(
        lambda: scalar("SELECT count(*) FROM queueapp_worker WHERE state = 'ALIVE' AND waiting") >= processes,
        timeout=60,
        what=f"{processes} worker process(es) waiting for work",
    )


def wait_succeeded(n: int, timeout: float = 600) -> None:
    wait_for(
        lambda: scalar("SELECT count(*) FROM queueapp_task_history WHERE status = 'SUCCESSFUL'") >= n,
        timeout=timeout,
        what=f"{n:,} tasks to succeed",
    )
