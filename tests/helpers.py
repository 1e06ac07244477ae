"""Real worker processes for tests: start, signal, wait on conditions with deadlines."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent

# Fast liveness and retries so fault tests finish in seconds (production defaults are 5 s / 30 s).
FAST_ENV = {
    "TASKQUEUE_HEARTBEAT_INTERVAL": "0.3",
    "TASKQUEUE_STALE_AFTER": "2",
    "TASKQUEUE_BACKOFF_BASE": "0.05",
    "TASKQUEUE_BACKOFF_MAX": "0.2",
    "TASKQUEUE_STAGE_INTERVAL": "0.1",
}


def database_url() -> str:
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@contextlib.contextmanager
def postgres_reachable_dir(prefix: str) -> Iterator[Path]:
    """A directory for a throwaway cluster or pooler, removed afterwards. Outside pytest's temporary
    tree: every pytest run on the machine makes that 0700 again, which locks the postgres user (as
    whom root runs them) out of a cluster that is running."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_for[T](
    condition: Callable[[], T], *, timeout: float, message: str | Callable[[], str], interval: float = 0.05
) -> T:
    """Poll condition until it returns something truthy; fail with message after timeout seconds (a
    callable message is made then: a worker's log as it is at the failure, not at the start)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            said = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for: {said}")
        time.sleep(interval)


class WorkerProcess:
    """`manage.py runworker` as a real subprocess against the test database."""

    def __init__(
        self,
        *args: str,
        log_dir: Path,
        url: str | None = None,
        env: dict[str, str] | None = None,
        script: str = "manage.py",
    ) -> None:
        """script: manage.py, or a wrapper that runs it (tests/slow_fork.py)."""
        self.log_path = log_dir / f"worker-{time.monotonic_ns()}.log"
        self.log = self.log_path.open("wb")
        full_env = {
            **os.environ,
            **FAST_ENV,
            "DATABASE_URL": url or database_url(),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            **(env or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, script, "runworker", *args],
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit within {timeout} s; log:\n{self.output()}") from None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        """Kill it, and any supervisor's children (they would stop by themselves, a heartbeat later)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)  # a supervisor must not start new children meanwhile
            for child in child_pids(self.process.pid):
                os.kill(child, 9)
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def run_manage(
    *args: str, url: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        **FAST_ENV,
        "DATABASE_URL": url or database_url(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def shipped_web_command() -> list[str]:
    """The web service's command as shipped: the Dockerfile's CMD (compose's web service runs it)."""
    found = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert found, "the Dockerfile has no CMD in exec (JSON) form"
    command = json.loads(found.group(1))
    assert isinstance(command, list)
    return [str(arg) for arg in command]


def with_bind(command: list[str], address: str) -> list[str]:
    """command listening on address instead: any --bind of its own replaced, the rest unchanged."""
    out: list[str] = []
    args = iter(command)
    for arg in args:
        if arg in ("-b", "--bind"):
            next(args)
        elif not arg.startswith("--bind="):
            out.append(arg)
    return [*out, "--bind", address]


class GunicornServer:
    """The web service exactly as shipped (shipped_web_command), on a free loopback port, against
    the test database."""

    def __init__(self, *, log_dir: Path, url: str | None = None, env: dict[str, str] | None = None) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log_path = log_dir / f"gunicorn-{self.port}.log"
        self.log = self.log_path.open("wb")
        env = {
            **os.environ,
            "DATABASE_URL": url or database_url(),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            **(env or {}),
        }
        command = with_bind(shipped_web_command(), f"127.0.0.1:{self.port}")
        assert command[0] == "gunicorn"
        self.command = [str(Path(sys.executable).parent / "gunicorn"), *command[1:]]
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for(self.up, timeout=30, message="gunicorn to answer")

    def up(self) -> bool:
        import http.client

        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def end_task(task_id: int, status: str, **changes: object) -> None:
    """Test set-up: move a live task to history as `status` (what a worker's last failure, a cancel
    or a finish does), then set the given columns on it there."""
    columns = (
        "id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at, started_at, "
        "finished_at, attempts, max_attempts, worker_ids, errors, return_value, timeout, cancel_requested, "
        "worker_id, unique_key"
    )
    values = columns.replace("status,", "%(status)s,").replace("finished_at,", "now(),")
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH moved AS (DELETE FROM queueapp_task_live WHERE id = %(id)s RETURNING *) "
            f"INSERT INTO queueapp_task_history ({columns}) SELECT {values} FROM moved",
            {"id": task_id, "status": status},
        )
        assert cursor.rowcount == 1, f"task {task_id} is not live"
        for column, value in changes.items():
            if column in ("errors", "return_value"):
                value = json.dumps(value)
            cursor.execute(f"UPDATE queueapp_task_history SET {column} = %s WHERE id = %s", [value, task_id])


class Counting:
    """A background service (workers.services.Service) that counts its runs."""

    name = "counting"

    def __init__(self) -> None:
        self.runs = 0

    def run_once(self) -> int:
        self.runs += 1
        return self.runs
