"""Worker scaling: throughput and pickup latency with N = 1, 2, 4, 8 worker processes (one thread
each) and N threads (in one process), for no-op tasks and for tasks that sleep.

    DATABASE_URL=... .venv/bin/python bench/scaling.py [--sleep SECONDS] [--publish]   (make bench-scaling)

For each mode and N the workers start first and wait, idle and LISTENing. Then, with the same workers:
  1. pickup latency: LATENCY_TASKS no-ops enqueued one at a time at LATENCY_RATE a second, each
     timed from its enqueue to its start by the database clock;
  2. no-op throughput: NOOP_TASKS committed at once and drained, timed from the first start to the
     last finish by the database clock;
  3. sleeping throughput: SLEEP_TASKS_PER_SLOT x N tasks that sleep --sleep seconds, likewise; the
     ideal is N / sleep tasks a second (every slot always busy).
Every task is checked SUCCESSFUL before the table is emptied for the next step. Results go to
bench/results/scaling-<time>.json, .csv and .png; --publish also copies the chart to
docs/benchmarks-scaling.png (what docs/benchmarks.md shows).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results
from bench.common import (
    ROOT,
    clear_tasks,
    percentile,
    scratch_database,
    wait_succeeded,
    wait_waiting,
    worker_env,
)

COUNTS = (1, 2, 4, 8)
MODES = ("processes", "threads")
LATENCY_TASKS, LATENCY_RATE = 60, 20.0
NOOP_TASKS = 20_000
SLEEP_TASKS_PER_SLOT = 25
PUBLISHED = ROOT / "docs" / "benchmarks-scaling.png"


def start_workers(mode: str, n: int) -> subprocess.Popen[bytes]:
    processes, threads = (n, 1) if mode == "processes" else (1, n)
    worker = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "runworker",
            "--processes",
            str(processes),
            "--concurrency",
            str(threads),
        ],
        cwd=ROOT,
        env=worker_env(os.environ["DATABASE_URL"]),
    )
    wait_waiting(processes)
    return worker


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    if worker.wait(60) != 0:
        sys.exit(f"runworker exited {worker.returncode}")


def finished_rows(expected: int) -> list[tuple[float, float, float]]:
    """(seconds from enqueue to start, start, finish as epochs) of every task, after checking that
    all `expected` succeeded; empties the tables."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, extract(epoch FROM started_at - enqueued_at), extract(epoch FROM started_at),"
            " extract(epoch FROM finished_at) FROM queueapp_task"
        )
        rows = cursor.fetchall()
    clear_tasks()
    succeeded = [row for row in rows if row[0] == "SUCCESSFUL"]
    if len(succeeded) != expected or len(rows) != expected:
        sys.exit(f"lost work: {len(succeeded)} of {expected} SUCCESSFUL ({len(rows)} rows)")
    return [(float(wait), float(start), float(end)) for _, wait, start, end in rows]


def pickup_latency() -> tuple[float, float, float]:
    """(p50, p95, max) milliseconds from enqueue to start of tasks arriving one at a time."""
    from bench import tasks

    for _ in range(LATENCY_TASKS):
        tasks.noop.enqueue()
        time.sleep(1 / LATENCY_RATE)
    wait_succeeded(LATENCY_TASKS, timeout=120)
    waits = [wait * 1000 for wait, _, _ in finished_rows(LATENCY_TASKS)]
    return percentile(waits, 50), percentile(waits, 95), max(waits)


def throughput(calls: list[tuple[tuple[Any, ...], dict[str, Any]]], task: Any) -> float:
    """Tasks a second draining `calls` of task committed at once (first start to last finish)."""
    task.enqueue_many(calls)
    wait_succeeded(len(calls), timeout=600)
    rows = finished_rows(len(calls))
    return len(calls) / (max(end for _, _, end in rows) - min(start for _, start, _ in rows))


def measure(mode: str, n: int, sleep: float) -> dict[str, Any]:
    from bench import tasks

    worker = start_workers(mode, n)
    try:
        p50, p95, worst = pickup_latency()
        noop = throughput([((), {})] * NOOP_TASKS, tasks.noop)
        slept = throughput([((sleep,), {})] * (SLEEP_TASKS_PER_SLOT * n), tasks.sleep)
    finally:
        stop(worker)
    return {
        "mode": mode,
        "workers": n,
        "noop_tasks_per_s": round(noop, 1),
        "sleep_tasks_per_s": round(slept, 1),
        "sleep_ideal_tasks_per_s": round(n / sleep, 1),
        "pickup_p50_ms": round(p50, 2),
        "pickup_p95_ms": round(p95, 2),
        "pickup_max_ms": round(worst, 2),
    }


def chart(rows: list[dict[str, Any]], path: Path, *, sleep: float, about: str) -> Path:
    """Three panels against N: no-op throughput, sleeping throughput (with its ideal), pickup latency."""
    plt = results.pyplot()
    figure, (noop, slept, latency) = plt.subplots(1, 3, figsize=(15, 4.8))
    for mode, colour in zip(MODES, ("#2563eb", "#d97706"), strict=True):
        mine = [row for row in rows if row["mode"] == mode]
        n = [row["workers"] for row in mine]
        noop.plot(n, [row["noop_tasks_per_s"] for row in mine], "o-", color=colour, label=mode)
        slept.plot(n, [row["sleep_tasks_per_s"] for row in mine], "o-", color=colour, label=mode)
        latency.plot(n, [row["pickup_p50_ms"] for row in mine], "o-", color=colour, label=f"{mode} p50")
        latency.plot(n, [row["pickup_p95_ms"] for row in mine], "o--", color=colour, label=f"{mode} p95")
    slept.plot(COUNTS, [n / sleep for n in COUNTS], ":", color="#6b7280", label="ideal (N / sleep)")
    titles = (
        ("no-op tasks: throughput", "tasks/s"),
        (f"tasks sleeping {sleep * 1000:.0f} ms: throughput", "tasks/s"),
        (f"pickup latency, {LATENCY_RATE:.0f} tasks/s arriving", "ms from enqueue to start"),
    )
    for axes, (title, unit) in zip((noop, slept, latency), titles, strict=True):
        axes.set_title(title)
        axes.set_xlabel("N (worker processes x 1 thread, or 1 process x N threads)")
        axes.set_ylabel(unit)
        axes.set_xscale("log", base=2)
        axes.set_xticks(COUNTS, [str(n) for n in COUNTS])
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(f"taskqueue worker scaling: {about}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main() -> None:
    sleep = float(sys.argv[sys.argv.index("--sleep") + 1]) if "--sleep" in sys.argv else 0.05
    when = results.stamp()
    with scratch_database("taskqueue_bench_scaling"):
        from bench.suite import environment

        rows = []
        for mode in MODES:
            for n in COUNTS:
                print(f"... {mode} N={n}", flush=True)
                rows.append(measure(mode, n, sleep))
                print(f"    {rows[-1]}", flush=True)
        about = environment()
    base = results.save("scaling", rows, about={"machine": about, "sleep_seconds": sleep}, when=when)
    png = chart(rows, base.with_suffix(".png"), sleep=sleep, about=f"{when}, {os.cpu_count()} CPUs")
    print(f"saved {base}.json, .csv and {png.name}")
    if "--publish" in sys.argv:
        shutil.copyfile(png, PUBLISHED)
        print(f"copied the chart to {PUBLISHED.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
