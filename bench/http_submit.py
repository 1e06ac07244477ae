"""Submissions per second through gunicorn on loopback, next to the Python API in the same run.

    DATABASE_URL=... .venv/bin/python bench/http_submit.py [REQUESTS] [CLIENTS]      (make bench runs it)

A load client of CLIENTS threads, each with one keep-alive connection, POSTs /api/tasks (one task
per request, one transaction each). The baseline is the same number of one-per-transaction
enqueues through django.tasks in this process, so the HTTP cost shows as a ratio. Both rates are
saved to bench/results/ (JSON, CSV and a chart, not tracked).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results
from bench.common import ROOT, scratch_database, worker_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load(port: int, key: str, requests: int, clients: int) -> float:
    body = json.dumps({"task": "bench-noop", "args": []})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    per_client = requests // clients
    failures: list[int] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(per_client):
            conn.request("POST", "/api/tasks", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 201:
                failures.append(response.status)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        sys.exit(f"{len(failures)} requests failed, e.g. status {failures[0]}")
    return per_client * clients / elapsed


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    with scratch_database("taskqueue_bench_http") as url:
        from django.db import connection

        from bench import tasks
        from queueapp import apikeys

        started = time.perf_counter()
        for _ in range(requests):
            tasks.noop.enqueue()
        python_rate = requests / (time.perf_counter() - started)

        key = apikeys.create_api_key("bench")[1]
        port = free_port()
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "taskqueue_project.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "--keep-alive",
                "30",
            ],
            cwd=ROOT,
            env=worker_env(url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            load(port, key, 200, clients)  # warm up every gunicorn worker
            http_rate = load(port, key, requests, clients)
        finally:
            server.terminate()
            server.wait(30)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM queueapp_task")
            stored = cursor.fetchone()[0]
        expected = 2 * requests + 200
        if stored != expected:
            sys.exit(f"expected {expected} tasks stored, found {stored}")
        print(f"{requests} submissions, one task per transaction, verified {stored} rows:")
        print(f"  Python API (task.enqueue), 1 thread      {python_rate:8,.0f} tasks/s")
        print(f"  HTTP POST /api/tasks, gunicorn 2x4, {clients} keep-alive clients {http_rate:8,.0f} tasks/s")
        print(f"  ratio HTTP / Python: {http_rate / python_rate:.2f}")
        from bench.suite import environment

        about = environment()
    rows = [
        {"path": "Python API (task.enqueue), 1 thread", "tasks_per_s": round(python_rate, 1)},
        {
            "path": f"HTTP POST /api/tasks, gunicorn 2x4, {clients} clients",
            "tasks_per_s": round(http_rate, 1),
        },
    ]
    results.save_bars(
        "http_submit",
        rows,
        about={"machine": about, "requests": requests},
        title=f"one task per transaction, {requests:,} submissions",
        label="path",
        value="tasks_per_s",
        unit="tasks/s",
    )


if __name__ == "__main__":
    main()
