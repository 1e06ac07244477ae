"""Behind Debian's PgBouncer in transaction mode: enqueues and a real worker, prepared statements
left to the default (auto), turned off, and forced on (which fails as it did before the queue looked);
the worker's statement and lock timeouts hold there, and stay with it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection

from queueapp import models, store
from tests import tasks
from tests.helpers import (
    FAST_ENV,
    ROOT,
    WorkerProcess,
    database_url,
    postgres_reachable_dir,
    run_manage,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
WARNING = "prepared_statements_off"

# One server connection for every client: a statement one client prepared is still there when the
# next one prepares its own under the same name, every time (with more, most of the time), and a
# setting one client leaves on the session is the next one's. PgBouncer refuses a startup `options`:
# nothing here tells it to ignore one (ignore_startup_parameters), so a worker that sent one would fail.
CONFIG = """
[databases]
* = host={host} port={port} user={user}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {pool}
max_client_conn = 200
"""


@pytest.fixture
def pgbouncer(request: pytest.FixtureRequest) -> Iterator[str]:
    """DATABASE_URL of the test database through PgBouncer in transaction mode, one server session
    for all clients unless the test asks for more (indirect parameter)."""
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; make test does as root)")
    s = connection.settings_dict
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        listen = sock.getsockname()[1]
    with postgres_reachable_dir("taskqueue-pgbouncer-") as workdir:  # as root, it runs as postgres
        ini = workdir / "pgbouncer.ini"
        ini.write_text(
            CONFIG.format(
                host=s["HOST"] or "127.0.0.1",
                port=s["PORT"] or 5432,
                user=s["USER"],
                listen=listen,
                pool=getattr(request, "param", 1),
            )
        )
        ini.chmod(0o644)
        command = [PGBOUNCER, str(ini)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        with (workdir / "pgbouncer.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: _accepts(listen), timeout=10, message="pgbouncer to listen")
                yield f"postgres://{s['USER']}@127.0.0.1:{listen}/{s['NAME']}"
            finally:
                process.terminate()
                process.wait(10)
                # Shown by pytest only when the test failed (captured output of the teardown).
                print("pgbouncer log:\n" + (workdir / "pgbouncer.log").read_text(errors="replace")[-4000:])


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def prepared(mode: str) -> dict[str, str]:
    """The environment for a TASKQUEUE_PREPARED_STATEMENTS mode; "default" leaves it unset."""
    return {} if mode == "default" else {"TASKQUEUE_PREPARED_STATEMENTS": mode}


def enqueue(url: str, mode: str, first: int, count: int) -> subprocess.CompletedProcess[str]:
    """A process of its own that enqueues count tasks through url, one transaction each, from four
    threads at once (as a web process would: each thread's first enqueue wants to know)."""
    code = (
        "import django; django.setup(); from concurrent.futures import ThreadPoolExecutor\n"
        "from tests import tasks\n"
        "with ThreadPoolExecutor(4) as pool:\n"
        f"    list(pool.map(lambda i: tasks.add.enqueue(i, 1), range({first}, {first + count})))"
    )
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tests.settings", **prepared(mode)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("mode", ["default", "off"])
def test_enqueues_and_a_worker_run_through_pgbouncer_in_transaction_mode(
    pgbouncer: str, mode: str, tmp_path: Path
) -> None:
    for first in (0, 50):  # two processes, each one's statements on the same server session
        done = enqueue(pgbouncer, mode, first, 50)
        assert done.returncode == 0, done.stderr
        assert done.stderr.count(WARNING) == (1 if mode == "default" else 0), done.stderr
    # LISTEN needs a session of its own: not through a pooler in transaction mode. One server session
    # for all the worker's connections: its heartbeat waits in the pooler's queue behind every round
    # of the drain, so the lease is not FAST_ENV's 2 s (a CI run lost it: the worker exited at 100).
    env = {
        **FAST_ENV,
        "TASKQUEUE_STALE_AFTER": "10",
        "TASKQUEUE_LISTEN_DATABASE_URL": database_url(),
        **prepared(mode),
    }
    worker = WorkerProcess("--concurrency", "4", log_dir=tmp_path, url=pgbouncer, env=env)
    try:
        wait_for(
            lambda: models.Task.objects.filter(status="SUCCESSFUL").count() == 100,
            timeout=60,
            message=lambda: f"100 tasks to succeed through pgbouncer; worker log:\n{worker.output()}",
        )
        more = enqueue(pgbouncer, mode, 100, 20)  # while the worker holds prepared-statement names too
        assert more.returncode == 0, more.stderr
        wait_for(
            lambda: models.Task.objects.filter(status="SUCCESSFUL").count() == 120,
            timeout=30,
            message="the next 20 to succeed",
        )
        assert sorted(models.Task.objects.values_list("return_value", flat=True)) == list(range(1, 121))
        assert worker.output().count(WARNING) == (1 if mode == "default" else 0)
        assert "Traceback" not in worker.output()
    finally:
        worker.stop()


def worker_through(pgbouncer: str, log_dir: Path, **env: str) -> WorkerProcess:
    """A real worker whose queue connections go through pgbouncer, and its listener around it."""
    env = {**FAST_ENV, "TASKQUEUE_LISTEN_DATABASE_URL": database_url(), **env}
    return WorkerProcess("--concurrency", "2", log_dir=log_dir, url=pgbouncer, env=env)


@pytest.mark.parametrize("pgbouncer", [24], indirect=True)  # the stuck ones wait on the lock, never the pool
def test_a_worker_behind_pgbouncer_gives_up_on_a_lock_within_its_lock_timeout(
    pgbouncer: str, raw_conn: psycopg.Connection, tmp_path: Path
) -> None:
    """The heartbeat (a Django connection, autocommit) and the round (the worker's own connection, in
    a transaction) stuck behind locks: both give up after lock_timeout (half STALE_AFTER), and the
    worker carries on once the locks are gone."""
    stale_after = 12  # lock_timeout 6 s; the lease outlasts a beat stuck that long, with room to spare
    worker = worker_through(pgbouncer, tmp_path, TASKQUEUE_STALE_AFTER=str(stale_after))
    try:
        wait_for(lambda: models.Worker.objects.exists(), timeout=30, message="the worker to register")
        worker_id = models.Worker.objects.get().id

        def failed(event: str) -> bool:
            # A beat queued behind another waiter for its row (the round's waiting mark) is cut
            # short by its statement timeout, half the lease, instead (workers.db ConnectionLimits.beats).
            said = worker.output()
            return any(
                f"{event} worker={worker_id} error=canceling statement due to {limit}" in said
                for limit in ("lock timeout", "statement timeout")
            )

        # Each stuck statement gives up after lock_timeout (without limits it would wait for as long
        # as the lock is held). The worker row's lock goes as soon as the beat gave up, so that the
        # next beats renew the lease while the round is still stuck behind the table's lock.
        with raw_conn.transaction():
            raw_conn.execute("LOCK TABLE queueapp_task_live IN EXCLUSIVE MODE")  # the claim waits
            with raw_conn.transaction():  # a savepoint: its row lock goes when it is rolled back
                raw_conn.execute("SELECT 1 FROM queueapp_worker WHERE id = %s FOR UPDATE", [worker_id])
                wait_for(
                    lambda: failed("heartbeat_failed"),
                    timeout=3 * stale_after,
                    message=lambda: f"the heartbeat to give up on the lock; worker log:\n{worker.output()}",
                )
                raise psycopg.Rollback()
            wait_for(
                lambda: failed("round_failed"),
                timeout=3 * stale_after,
                message=lambda: f"the round to give up on the lock; worker log:\n{worker.output()}",
            )
        tasks.add.enqueue(2, 3)
        wait_for(
            lambda: models.Task.objects.filter(status="SUCCESSFUL").count() == 1,
            timeout=30,
            message=lambda: f"a task to run after the locks; worker log:\n{worker.output()}",
        )
        assert worker.process.poll() is None
    finally:
        worker.stop()


@pytest.mark.parametrize("mode", ["default", "off"])
def test_another_client_of_the_pooler_inherits_no_limits_from_a_worker(
    pgbouncer: str, mode: str, tmp_path: Path
) -> None:
    """One server session for all (default_pool_size = 1): it ran the worker's statements, limits
    and all, before any task succeeded; the next client of the pooler finds the server's defaults."""
    worker = worker_through(pgbouncer, tmp_path, **prepared(mode))
    try:
        tasks.add.enqueue(2, 3)
        wait_for(
            lambda: models.Task.objects.filter(status="SUCCESSFUL").count() == 1,
            timeout=30,
            message=lambda: f"a task to run through pgbouncer; worker log:\n{worker.output()}",
        )
        with psycopg.connect(pgbouncer, autocommit=True) as other:
            for setting in ("statement_timeout", "lock_timeout"):
                assert other.execute(f"SHOW {setting}").fetchone() == ("0",), setting
    finally:
        worker.stop()


def test_prepared_statements_forced_on_behind_pgbouncer_fail_as_they_did_before_the_check(
    pgbouncer: str, tmp_path: Path
) -> None:
    """Why auto looks for a pooler: forced on, a connection meets another one's statement (another
    thread's, or at the latest the next process's). Each failure says what it means and what to do."""
    enqueue(pgbouncer, "on", 0, 20)
    refused = enqueue(pgbouncer, "on", 20, 20)
    assert refused.returncode != 0
    assert 'prepared statement "_pg3_0" already exists' in refused.stderr
    assert "prepared_statement_lost" in refused.stderr
    assert "set TASKQUEUE_PREPARED_STATEMENTS=auto (or off)" in refused.stderr

    env = {**FAST_ENV, "TASKQUEUE_LISTEN_DATABASE_URL": database_url(), **prepared("on")}
    worker = WorkerProcess("--concurrency", "2", log_dir=tmp_path, url=pgbouncer, env=env)
    try:
        # What happens next depends on what the pooler's one server session is doing (the worker
        # exits, or waits for it); what matters is that the operator is told.
        wait_for(
            lambda: "prepared_statement_lost" in worker.output(),
            timeout=30,
            message="the worker to log what its error means",
        )
    finally:
        worker.stop()


def test_an_unknown_prepared_statements_setting_stops_start_up_and_names_it() -> None:
    checked = run_manage("check", env={"TASKQUEUE_PREPARED_STATEMENTS": "sometimes"})
    assert checked.returncode != 0
    assert "queueapp.E006" in checked.stderr
    assert "TASKQUEUE_PREPARED_STATEMENTS is 'sometimes'; it must be auto, on or off" in checked.stderr


def test_the_settings_earlier_true_and_false_still_mean_on_and_off(settings: Any) -> None:
    for value, prepare in (("false", False), ("True", True), ("OFF", False)):
        settings.TASKQUEUE = {**settings.TASKQUEUE, "PREPARED_STATEMENTS": value}
        assert store.poolers.prepared_statements() is prepare
