"""Notify only when someone waits: what NOTIFY costs producers, and how fast an idle worker wakes.

    DATABASE_URL=... .venv/bin/python bench/notify_scaling.py [--seconds S] [--rounds R]

1. Throughput of PRODUCERS processes each enqueueing no-ops one per transaction (task.enqueue()),
   for S seconds per round, in three modes, interleaved round by round (A B C A B C ...) so that
   load from elsewhere on the machine falls on all three alike; the figures are ratios within
   this one run, the median over rounds of each round's ratio:
     busy     every worker busy (a worker's two slots hold sleeping tasks): nobody waits, so the
              enqueues do not notify;
     off      TASKQUEUE_NOTIFY=off in the producers: nothing notifies (the ceiling);
     waiting  a worker row marked waiting on the queue and never claiming: every enqueue notifies,
              as every enqueue did before (the notify lock's cost).
2. Pickup latency: LATENCY_TASKS no-ops enqueued one at a time at LATENCY_RATE a second by one
   producer with one idle worker (polling every 30 s, so only NOTIFY wakes it), enqueue to start
   by the database clock.
Results go to bench/results/notify_scaling-<time>.json and .csv.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import latency, results
from bench.common import ROOT, clear_tasks, percentile, scalar, scratch_database, wait_for, worker_env
from bench.drain import RUNWORKER

PRODUCERS = 16
LATENCY_TASKS = 300
LATENCY_RATE = 50.0
MODES = ("busy", "off", "waiting")


def produce(seconds: float, notify: bool, counts: Any, index: int) -> None:
    """A forked producer: enqueue no-ops for `seconds`, one per transaction; the count goes to counts."""
    from django.test.utils import override_settings

    from bench import tasks
    from taskqueue_project.settings import TASKQUEUE

    done = 0
    with override_settings(TASKQUEUE={**TASKQUEUE, "NOTIFY": notify}):
        tasks.noop.enqueue()  # connect (and prepare) before the clock starts
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            tasks.noop.enqueue()
            done += 1
    counts[index] = done


def enqueue_rate(seconds: float, *, notify: bool) -> float:
    """Enqueues a second of PRODUCERS forked processes, each on a connection of its own."""
    from django.db import connections

    connections.close_all()  # nothing shared with the children
    context = multiprocessing.get_context("fork")
    counts = context.Array("q", PRODUCERS)
    children = [context.Process(target=produce, args=(seconds, notify, counts, i)) for i in range(PRODUCERS)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    return float(sum(counts[:])) / seconds


def set_fake_waiter(present: bool) -> None:
    """A worker row waiting on the default queue that never claims: every enqueue notifies."""
    from queueapp import models

    models.Worker.objects.filter(hostname="bench-waiter").delete()
    if present:
        models.Worker.objects.create(
            id=uuid.uuid4(), hostname="bench-waiter", pid=0, queues=["default"], concurrency=1, waiting=True
        )


def producer_modes(seconds: float, rounds: int) -> dict[str, list[float]]:
    from bench import tasks

    busy = subprocess.Popen(
        [*RUNWORKER, "--concurrency", "2", "--prefetch", "0", "--poll-interval", "30"],
        cwd=ROOT,
        env=worker_env(os.environ["DATABASE_URL"]),
    )
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for _ in range(2):
            tasks.sleep.enqueue(3600)
        wait_for(
            lambda: scalar("SELECT count(*) FROM queueapp_task_live WHERE status = 'RUNNING'") == 2,
            timeout=60,
            what="the worker to run two sleeping tasks",
        )
        wait_for(
            lambda: scalar("SELECT count(*) FROM queueapp_worker WHERE waiting") == 0,
            timeout=10,
            what="the busy worker to clear its waiting mark",
        )
        for _ in range(rounds):
            for mode in MODES:
                set_fake_waiter(mode == "waiting")
                rates[mode].append(enqueue_rate(seconds, notify=mode != "off"))
                print(f"{mode:8} {rates[mode][-1]:,.0f} enqueues/s", flush=True)
        set_fake_waiter(False)
    finally:
        busy.kill()
        busy.wait(60)
    clear_tasks()
    return rates


def pickup_latencies() -> list[float]:
    worker = subprocess.Popen(
        [*RUNWORKER, "--concurrency", "1", "--prefetch", "0", "--poll-interval", "30"],
        cwd=ROOT,
        env=worker_env(os.environ["DATABASE_URL"]),
    )
    try:
        wait_for(
            lambda: scalar("SELECT count(*) FROM queueapp_worker WHERE waiting AND state = 'ALIVE'") == 1,
            timeout=60,
            what="the idle worker to mark itself waiting",
        )
        latencies = latency.timed_pickups(LATENCY_TASKS, LATENCY_RATE)
    finally:
        worker.terminate()
        worker.wait(60)
    clear_tasks()
    return latencies


def main() -> None:
    seconds = float(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 4.0
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
    when = results.stamp()
    with scratch_database("taskqueue_bench_notify"):
        rates = producer_modes(seconds, rounds)
        latencies = pickup_latencies()
    mean = {mode: sum(values) / len(values) for mode, values in rates.items()}

    def paired(mode: str) -> float:
        return statistics.median(ours / off for ours, off in zip(rates[mode], rates["off"], strict=True))

    producers = f"{PRODUCERS} producers"
    rows = [
        {"figure": f"{producers}, every worker busy", "value": mean["busy"], "unit": "enqueues/s"},
        {"figure": f"{producers}, TASKQUEUE_NOTIFY=off", "value": mean["off"], "unit": "enqueues/s"},
        {"figure": f"{producers}, a worker waiting", "value": mean["waiting"], "unit": "enqueues/s"},
        {"figure": "busy / off", "value": paired("busy"), "unit": "ratio (target >= 0.90)"},
        {"figure": "waiting / off", "value": paired("waiting"), "unit": "ratio"},
        {"figure": "pickup p50, 1 producer, 1 idle worker", "value": percentile(latencies, 50), "unit": "ms"},
        {"figure": "pickup p99, 1 producer, 1 idle worker", "value": percentile(latencies, 99), "unit": "ms"},
    ]
    for row in rows:
        print(f"{row['figure']:45} {row['value']:>10,.2f} {row['unit']}")
    about = {"seconds": seconds, "rounds": rounds, "cpus": os.cpu_count(), "rates": rates}
    base = results.save("notify_scaling", rows, about=about, when=when)
    print(f"saved {base}.json and .csv")


if __name__ == "__main__":
    main()
