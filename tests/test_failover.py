"""Failover to a promoted streaming standby, named with the primary in one multi-host URL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from taskqueue_project import devdb
from tests.helpers import FAST_ENV, ROOT, WorkerProcess, postgres_reachable_dir, run_manage, wait_for

pytestmark = pytest.mark.slow

# Enqueues one task per transaction for as long as it runs, and prints each id once committed; a
# failed enqueue (no primary for a moment) is tried again on a new connection.
ENQUEUER = """
import sys, time, django
django.setup()
from django.db import DatabaseError, connection
from tests import tasks
n = 0
while True:
    try:
        result = tasks.sleep_then_return.enqueue(0.01, str(n))
    except DatabaseError as exc:
        print(f"enqueue_failed {exc}", file=sys.stderr, flush=True)
        connection.close()
        time.sleep(0.05)
        continue
    print(result.id, flush=True)
    n += 1
    time.sleep(0.005)
"""


@pytest.fixture
def primary_and_standby() -> Iterator[tuple[Path, Path, str]]:
    """A primary and its streaming standby, and the URL that names both (writes go to the primary)."""
    with postgres_reachable_dir("taskqueue-failover-") as workdir:
        primary, standby = workdir / "primary", workdir / "standby"
        try:
            devdb.start(primary)
            devdb.start_standby(primary, standby)
            # The standby first: only target_session_attrs keeps a connection off it.
            hosts = f"127.0.0.1:{devdb.port_of(standby)},127.0.0.1:{devdb.port_of(primary)}"
            yield (
                primary,
                standby,
                f"postgres://postgres@{hosts}/{devdb.DATABASE}?target_session_attrs=read-write",
            )
        finally:
            devdb.stop(primary)
            devdb.stop(standby)


LISTENERS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'taskqueue-listener'"


def direct(datadir: Path) -> str:
    return f"postgres://postgres@127.0.0.1:{devdb.port_of(datadir)}/{devdb.DATABASE}"


def finished_ids(url: str) -> set[int]:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            rows = conn.execute("SELECT id FROM queueapp_task WHERE status = 'SUCCESSFUL'").fetchall()
    except psycopg.OperationalError:
        return set()
    return {task_id for (task_id,) in rows}


def committed_ids(log: Path) -> set[int]:
    return {int(line) for line in log.read_text().split()}


def test_workers_and_an_enqueuer_fail_over_to_the_promoted_standby_and_lose_nothing(
    primary_and_standby: tuple[Path, Path, str], tmp_path: Path
) -> None:
    primary, standby, url = primary_and_standby
    migrated = run_manage("migrate", "--noinput", url=url)  # the standby would refuse it
    assert migrated.returncode == 0, migrated.stderr
    env = {"TASKQUEUE_STALE_AFTER": "60"}  # a failover is not a reason to declare workers lost
    workers = [WorkerProcess("--concurrency", "4", log_dir=tmp_path, url=url, env=env) for _ in range(2)]
    ids_log = tmp_path / "enqueued.txt"
    with ids_log.open("w") as out, (tmp_path / "enqueuer.log").open("w") as err:
        enqueuer = subprocess.Popen(
            [sys.executable, "-c", ENQUEUER],
            cwd=ROOT,
            env={**os.environ, **FAST_ENV, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tests.settings"},
            stdout=out,
            stderr=err,
        )
    try:
        wait_for(lambda: len(finished_ids(direct(primary))) >= 100, timeout=60, message="work under way")
        with psycopg.connect(direct(primary), autocommit=True) as conn:
            wait_for(
                lambda: conn.execute(LISTENERS).fetchone() == (2,),
                timeout=10,
                message="each worker's listener to be on the primary",
            )
        devdb.stop(primary)
        committed_before_the_stop = committed_ids(ids_log)
        devdb.promote(standby)
        promoted = time.monotonic()

        new_primary = direct(standby)
        wait_for(
            lambda: len(committed_ids(ids_log)) > len(committed_before_the_stop) + 50,
            timeout=30,
            message="the enqueuer to commit on the promoted standby",
        )
        wait_for(
            lambda: committed_before_the_stop <= finished_ids(new_primary),
            timeout=60,
            message="every task committed before the stop to succeed on the promoted standby",
        )
        resumed_after = time.monotonic() - promoted
        enqueuer.terminate()
        enqueuer.wait(10)
        everything = committed_ids(ids_log)
        wait_for(
            lambda: everything <= finished_ids(new_primary),
            timeout=60,
            message="every task enqueued after the failover to succeed too",
        )
        with psycopg.connect(new_primary, autocommit=True) as conn:
            statuses = dict(conn.execute("SELECT status, count(*) FROM queueapp_task GROUP BY 1").fetchall())
            wait_for(
                lambda: conn.execute(LISTENERS).fetchone() == (2,),
                timeout=10,
                message="each worker's listener to reconnect to the new primary",
            )
        assert set(statuses) == {"SUCCESSFUL"}, statuses
        for worker in workers:
            assert worker.process.poll() is None, f"a worker died in the failover:\n{worker.output()}"
        print(f"tasks committed before the stop all done {resumed_after:.2f} s after the promotion")
    finally:
        if enqueuer.poll() is None:
            enqueuer.kill()
        for worker in workers:
            worker.stop()
