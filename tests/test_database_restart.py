"""A PostgreSQL restart under busy workers, on a throwaway cluster of the test's own."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from queueapp import store
from queueapp.sql import QUERIES
from taskqueue_project import devdb
from tests.helpers import WorkerProcess, postgres_reachable_dir, run_manage, wait_for

pytestmark = pytest.mark.slow


ADD_ROW = {
    "task_path": "tests.tasks.add",
    "queue_name": "default",
    "priority": 0,
    "run_after": None,
    "max_attempts": 5,
    "timeout": None,
    "args": "[1, 2]",
    "kwargs": "{}",
    "notify": True,
    "concurrency_key": None,
}
"""enqueue_task's parameters for tests.tasks.add(1, 2) on the default queue."""


@pytest.fixture
def cluster() -> Iterator[tuple[Path, str]]:
    with postgres_reachable_dir("taskqueue-restart-") as workdir:
        datadir = workdir / "pg"
        try:
            yield datadir, devdb.start(datadir)
        finally:
            devdb.stop(datadir)


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, connect_timeout=2) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM queueapp_task GROUP BY status").fetchall())


def safe_counts(url: str) -> dict[str, int]:
    try:
        return counts(url)
    except psycopg.OperationalError:
        return {}


def test_workers_survive_a_database_restart_and_lose_nothing(
    cluster: tuple[Path, str], tmp_path: Path
) -> None:
    datadir, url = cluster
    migrated = run_manage("migrate", "--noinput", url=url)
    assert migrated.returncode == 0, migrated.stderr
    row = {
        "task_path": "tests.tasks.sleep_then_return",
        "queue_name": "default",
        "priority": 0,
        "run_after": None,
        "max_attempts": 5,
        "timeout": None,
        "args": "[0.05]",
        "kwargs": "{}",
        "concurrency_key": None,
        "notify": True,
    }
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(QUERIES["enqueue_task"], [row] * 1500)

    env = {"TASKQUEUE_STALE_AFTER": "60"}  # a restart is not a reason to declare workers lost
    workers = [WorkerProcess("--concurrency", "4", log_dir=tmp_path, url=url, env=env) for _ in range(3)]
    try:
        wait_for(lambda: safe_counts(url).get("SUCCESSFUL", 0) >= 150, timeout=60, message="work under way")
        devdb.restart(datadir)
        back = time.monotonic()
        done_at_restart = counts(url).get("SUCCESSFUL", 0)

        wait_for(
            lambda: counts(url).get("SUCCESSFUL", 0) > done_at_restart + 20,
            timeout=5,
            message="work to resume within 5 s of the server being back",
        )
        resumed_after = time.monotonic() - back
        wait_for(
            lambda: counts(url).get("SUCCESSFUL", 0) == 1500, timeout=120, message="all tasks to succeed"
        )
        assert counts(url) == {"SUCCESSFUL": 1500}
        assert all(worker.process.poll() is None for worker in workers), "a worker died in the restart"
        print(f"work resumed {resumed_after:.2f} s after the server was back")
    finally:
        for worker in workers:
            worker.stop()


def test_the_api_answers_503_while_the_database_is_down(cluster: tuple[Path, str], tmp_path: Path) -> None:
    import http.client

    from tests.helpers import GunicornServer

    datadir, url = cluster
    assert run_manage("migrate", "--noinput", url=url).returncode == 0
    key = run_manage("create_api_key", "outage", url=url).stdout.strip()
    server = GunicornServer(log_dir=tmp_path, url=url)

    def get(path: str) -> tuple[int, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())

    try:
        assert get("/api/health")[0] == 200
        devdb.stop(datadir)
        status, body = get("/api/tasks")
        assert status == 503, body
        assert body["error"] == "database_unavailable"
        status, body = get("/api/health")  # the verdict, with why
        assert status == 503, body
        assert (body["status"], body["database"]) == ("unhealthy", "unavailable")
        assert body["reasons"][0].startswith("database unreachable: ")
        devdb.start(datadir)
        wait_for(lambda: get("/api/health")[0] == 200, timeout=15, message="the API to recover")
    finally:
        server.stop()


def test_a_worker_stopped_after_five_restarts_records_its_stop(
    cluster: tuple[Path, str], tmp_path: Path
) -> None:
    """The main thread's connection from start-up died with the first restart: it is checked before
    the shutdown writes (STOPPING, STOPPED), which go through on a fresh one, nothing logged failed."""
    datadir, url = cluster
    assert run_manage("migrate", "--noinput", url=url).returncode == 0
    row = ADD_ROW
    worker = WorkerProcess("--concurrency", "1", "--poll-interval", "0.2", log_dir=tmp_path, url=url)
    try:
        for restart in range(5):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(QUERIES["enqueue_task"], row)
            wait_for(
                lambda done=restart + 1: safe_counts(url).get("SUCCESSFUL", 0) == done,
                timeout=30,
                message=f"a task to succeed before restart {restart + 1}",
            )
            devdb.restart(datadir)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
        assert "shutdown_write_failed" not in worker.output()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT state FROM queueapp_worker").fetchall() == [("STOPPED",)]
    finally:
        worker.stop()


class Session(store.WorkerSession):
    """A worker's round session on the throwaway cluster (not the test database Django points at)."""

    def __init__(self, url: str, worker_id: uuid.UUID, queues: tuple[str, ...] = ("default",)) -> None:
        super().__init__(worker_id=worker_id, queues=queues)
        self.url = url

    def connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.url, autocommit=True)
        conn.execute("SET TIME ZONE 'UTC'")
        return conn


def test_a_claim_a_database_crash_undid_runs_again_and_its_first_worker_is_fenced_out(
    cluster: tuple[Path, str],
) -> None:
    """A round that only claims commits without waiting for a flush; one that records a success
    waits, and so does a flow-controlled claim (it spends the limits' state too). A crash (immediate
    stop) before anything flushed the plain claim: the task is READY again with its attempt not
    counted, another worker claims it, and the first one's success is not recorded. What was
    recorded durably stays."""
    datadir, url = cluster
    assert run_manage("migrate", "--noinput", url=url).returncode == 0
    first, second = uuid.uuid4(), uuid.uuid4()
    row = {**ADD_ROW, "notify": False}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")  # nothing flushes an async commit
        conn.execute("SELECT pg_reload_conf()")
        conn.cursor().executemany(
            QUERIES["enqueue_task"], [row, {**row, "priority": -1}, {**row, "queue_name": "emails"}]
        )
        conn.execute("INSERT INTO queueapp_queuecontrol (name, concurrency_limit) VALUES ('emails', 5)")
        for worker_id in (first, second):
            params = {
                "id": worker_id,
                "hostname": "test",
                "pid": 1,
                "queues": ["default", "emails"],
                "concurrency": 1,
                "wake_channel": None,
            }
            conn.execute(QUERIES["register_worker"], params)
    session = Session(url, first)
    _, (done,) = session.round([], 1)
    statuses, rows = session.round([store.Success(done.id, done.attempts, "3")], 0)
    assert (statuses, rows) == ({done.id: "SUCCESSFUL"}, [])  # its commit waited for the flush
    limited = Session(url, first, queues=("emails",))
    view = limited.flow_view()
    assert view.queues == frozenset({"emails"})
    _, (kept,) = limited.round([], 1, view=view)  # a flow-controlled claim: it waited too
    limited.close()
    _, (undone,) = session.round([], 1)  # this claim's did not
    session.close()

    devdb.stop(datadir, mode="immediate")
    devdb.start(datadir)

    with psycopg.connect(url) as conn:
        status = dict(conn.execute("SELECT id, status FROM queueapp_task").fetchall())
        assert status == {done.id: "SUCCESSFUL", undone.id: "READY", kept.id: "RUNNING"}
        (attempts,) = conn.execute("SELECT attempts FROM queueapp_task WHERE id = %s", [undone.id]).fetchone()
        assert attempts == 0
    again = Session(url, second)
    _, (rerun,) = again.round([], 1)
    assert (rerun.id, rerun.attempts) == (undone.id, 1)
    session = Session(url, first)
    assert session.round([store.Success(undone.id, undone.attempts, "3")], 0) == ({}, [])  # fenced out
    assert again.round([store.Success(rerun.id, rerun.attempts, "3")], 0) == ({rerun.id: "SUCCESSFUL"}, [])
    session.close()
    again.close()
