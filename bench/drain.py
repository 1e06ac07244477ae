"""Drain N no-op tasks with 1 and 2 worker processes, next to pgbench's claim-100 ceiling.

The workers are started first and wait, idle and LISTENing; then the N tasks are committed in one
transaction, and the drain is timed from the first start to the last finish by the database clock.

The ceiling is pgbench (-M prepared) running the worker's own claim statement for 100 rows and then
its own finish statement for them (the move to history), two commits per 100 tasks, with 2 and with
4 clients; the faster counts. Every drain is verified in the database: N rows, all SUCCESSFUL.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from urllib.parse import urlsplit

from bench.common import ROOT, Figure, clear_tasks, rate_figure, wait_succeeded, wait_waiting, worker_env
from taskqueue_project.devdb import find_bindir

RUNWORKER = [sys.executable, "manage.py", "runworker"]
PGBENCH_WORKER = "00000000-0000-0000-0000-00000000b001"


def fill(n: int) -> None:
    """n no-op tasks, committed at once."""
    from django.db import transaction

    from bench import tasks

    with transaction.atomic():
        for start in range(0, n, 20_000):
            tasks.noop.enqueue_many([((), {})] * min(20_000, n - start))


def verified_rate(n: int) -> float:
    """Tasks/s from first start to last finish, after checking all n succeeded; empties the table."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE status = 'SUCCESSFUL'), count(*),"
            " extract(epoch FROM max(finished_at) - min(started_at)) FROM queueapp_task_history"
        )
        done, total, busy = cursor.fetchone()
    clear_tasks()
    if done != n or total != n:
        sys.exit(f"drain lost work: {done} of {n} SUCCESSFUL ({total} rows)")
    return n / float(busy)


def drain_with_workers(n: int, processes: int, concurrency: int) -> float:
    """Workers started and idle first, then n tasks committed at once: no process starts late."""
    worker = subprocess.Popen(
        [*RUNWORKER, "--processes", str(processes), "--concurrency", str(concurrency)],
        cwd=ROOT,
        env=worker_env(os.environ["DATABASE_URL"]),
    )
    try:
        wait_waiting(processes)
        fill(n)
        wait_succeeded(n)
    finally:
        worker.send_signal(signal.SIGTERM)
        if worker.wait(60) != 0:
            sys.exit(f"runworker exited {worker.returncode}")
    return verified_rate(n)


def pgbench_script() -> str:
    """The worker's claim (LIMIT 100, ids and attempts only) then its fenced finish of those 100."""
    from queueapp.sql import QUERIES

    def inline(query: str) -> str:
        query = re.sub(r"--[^\n]*\n", "", query)
        query = (
            query.replace("%(queues)s", "'{default}'")
            .replace("%(worker_id)s", f"'{PGBENCH_WORKER}'")
            .replace("%(limit)s", "100")
            .replace("%(flow_epoch)s", "0")
            .replace("%(ids)s", "string_to_array(:ids, ',')")
            .replace("%(attempts)s", "string_to_array(:attempts, ',')")
            .replace(
                "%(return_values)s",
                "to_jsonb(array_fill(NULL::int, ARRAY[cardinality(string_to_array(:ids, ','))]))",
            )
        )
        return " ".join(query.split())

    claim = QUERIES["claim_tasks"]
    claim = inline(claim[: claim.index("RETURNING")] + "RETURNING t.id, t.attempts")
    return (
        f"WITH claimed AS ({claim}) SELECT string_agg(id::text, ',') AS ids,"
        f" string_agg(attempts::text, ',') AS attempts FROM claimed\n\\gset\n"
        f"{inline(QUERIES['finish_tasks'])};\n"
    )


def pgbench(n: int, clients: int) -> float:
    from queueapp import models

    binary = shutil.which("pgbench") or str(find_bindir() / "pgbench")  # beside initdb
    models.Worker.objects.get_or_create(
        id=PGBENCH_WORKER,
        defaults={"hostname": "pgbench", "pid": 0, "queues": ["default"], "concurrency": 100},
    )
    fill(n)
    url = urlsplit(os.environ["DATABASE_URL"])
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(pgbench_script())
        script.flush()
        command = [binary, "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients)]
        command += ["-t", str(n // 100 // clients), "-f", script.name, "-h", url.hostname or "127.0.0.1"]
        command += ["-p", str(url.port or 5432), "-U", url.username or "postgres", url.path.lstrip("/")]
        proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"pgbench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return verified_rate(n)


def figures(n: int = 20_000, concurrency: int = 32) -> list[Figure]:
    ceiling, clients = max((pgbench(n, clients), clients) for clients in (2, 4))
    label = f"pgbench claim-100 + done, {clients} clients"
    rows = []
    for processes in (1, 2):
        rate = drain_with_workers(n, processes, concurrency)
        rows.append(
            rate_figure(
                f"drain {n:,} no-ops, {processes} process(es) x {concurrency} threads",
                rate,
                ceiling,
                label,
                at_least=0.15 if processes == 2 else None,
            )
        )
    return rows
