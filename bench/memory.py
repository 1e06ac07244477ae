"""Worker memory: resident set size after start-up and after it has run 200,000 tasks, and what a
supervisor's children share with it once they have collected their garbage.

One `runworker` process (no supervisor) is started idle; its RSS is read from /proc once it is
LISTENing, then 200,000 no-op tasks are enqueued in bulk and run, and its RSS is read again once
all are SUCCESSFUL. Growth beyond the start would be a leak per task.

Then `runworker --processes 2`: the PSS of the supervisor and its children, idle, and again after
each child has run one full garbage collection (bench.tasks.collect). A collection writes to every
object it scans; a child that scanned what it inherited copied the supervisor's pages.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from bench.common import ROOT, Figure, clear_tasks, scalar, wait_for, wait_succeeded, wait_waiting, worker_env
from bench.drain import RUNWORKER, fill


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss for pid {pid}")


def fleet_pss_kib(supervisor: int) -> int:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return pss_kib(supervisor) + sum(pss_kib(int(child)) for child in children)


def shared_after_collections() -> Figure:
    from bench import tasks

    supervisor = subprocess.Popen(
        [*RUNWORKER, "--processes", "2", "--concurrency", "1", "--prefetch", "0"],
        cwd=ROOT,
        env=worker_env(os.environ["DATABASE_URL"]),
    )
    try:
        wait_waiting(2)
        start = fleet_pss_kib(supervisor.pid)
        # One each: the second is enqueued once the first runs, when its child has no slot free.
        tasks.collect.enqueue(0.5)
        wait_for(
            lambda: scalar("SELECT count(*) FROM queueapp_task_live WHERE status = 'RUNNING'"),
            timeout=60,
            what="the first collection to start",
        )
        tasks.collect.enqueue(0.5)
        wait_succeeded(2)
        after = fleet_pss_kib(supervisor.pid)
        children = scalar("SELECT count(DISTINCT worker_id) FROM queueapp_task_history")
        if children != 2:
            raise RuntimeError(f"the collections ran in {children} child(ren), not one in each")
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(60)
    clear_tasks()
    growth = after / start - 1
    return Figure(
        "PSS of a supervisor and 2 children after each child's full garbage collection",
        f"{after / 1024:.1f} MiB",
        f"{start / 1024:.1f} MiB (the same processes before)",
        f"{growth:+.1%}",
        "<= +10%",
        growth <= 0.10,
    )


def figures(n: int = 200_000, concurrency: int = 32) -> list[Figure]:
    worker = subprocess.Popen(
        [*RUNWORKER, "--concurrency", str(concurrency), "--poll-interval", "1"],
        cwd=ROOT,
        env=worker_env(os.environ["DATABASE_URL"]),
    )
    try:
        wait_waiting(1)
        start = rss_kib(worker.pid)
        fill(n)
        wait_succeeded(n)
        after = rss_kib(worker.pid)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    clear_tasks()
    growth = after / start - 1
    return [
        Figure(
            f"worker RSS after {n:,} tasks (1 process x {concurrency} threads)",
            f"{after / 1024:.1f} MiB",
            f"{start / 1024:.1f} MiB (the same worker after start-up)",
            f"{growth:+.1%}",
            "<= +10%",
            growth <= 0.10,
        ),
        shared_after_collections(),
    ]
