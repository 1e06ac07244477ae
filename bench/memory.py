"""Worker memory: resident set size after start-up and after it has run 200,000 tasks.

One `runworker` process (no supervisor) is started idle; its RSS is read from /proc once it is
LISTENing, then 200,000 no-op tasks are enqueued in bulk and run, and its RSS is read again once
all are SUCCESSFUL. Growth beyond the start would be a leak per task.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from bench.common import ROOT, Figure, clear_tasks, wait_succeeded, wait_waiting, worker_env
from bench.drain import RUNWORKER, fill


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


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
        )
    ]
