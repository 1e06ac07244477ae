"""CPU per task of a drain, this checkout against a baseline checkout, rounds alternating.

    DATABASE_URL=... python -m bench.drain_cpu --baseline CHECKOUT [--tasks 60000] [--rounds 6]
                                               [--worker-args "--concurrency 32"]

Each checkout gets a database of its own on DATABASE_URL's server, migrated by that checkout. A round
fills it with N no-op tasks (bench.drain.fill: one transaction) and runs `runworker --processes 2
--burst` from that checkout until it exits: its wall time, and the user + system CPU of the
supervisor and its children (they are waited for, so getrusage counts them), per task, start-up
included. Every task must have succeeded. The CPU is the steadier figure on this shared machine; the
two checkouts take turns, so their medians compare. The baseline needs its bytecode compiled
(`python -m compileall -q manage.py taskqueue_project queueapp workers` in it), as `make bytecode`
does here, or each of its processes compiles it again.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results
from bench.common import ROOT, checkout_database, worker_env

FILL = "import django; django.setup(); from bench.drain import fill; import sys; fill(int(sys.argv[1]))"


def drain(url: str, checkout: Path, tasks: int, worker_args: list[str]) -> dict[str, float]:
    """Fill, then time a burst worker from checkout; its wall and CPU microseconds per task."""
    env = worker_env(url)
    subprocess.run([sys.executable, "-c", FILL, str(tasks)], cwd=checkout, env=env, check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    command = [sys.executable, "manage.py", "runworker", "--processes", "2", "--burst", *worker_args]
    subprocess.run(command, cwd=checkout, env=env, check=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with psycopg.connect(url, autocommit=True) as conn:
        done = conn.execute(
            "SELECT count(*) FROM queueapp_task_history WHERE status = 'SUCCESSFUL'"
        ).fetchone()
        conn.execute("TRUNCATE queueapp_task_live, queueapp_task_history")
    if done is None or done[0] != tasks:
        sys.exit(f"{checkout}: {done} of {tasks} tasks succeeded")
    return {"wall_s": wall, "cpu_us_per_task": cpu * 1e6 / tasks, "tasks_per_s": tasks / wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout to compare with")
    parser.add_argument("--tasks", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--worker-args", default="", help="more runworker flags, for both")
    args = parser.parse_args()
    base_url = os.environ.get("DATABASE_URL")
    if not base_url:
        sys.exit("DATABASE_URL is not set")
    checkouts = {"ours": ROOT, "baseline": args.baseline.resolve()}
    urls = {name: checkout_database(base_url, f"drain_cpu_{name}", path) for name, path in checkouts.items()}
    rows: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for name in list(checkouts) if round_ % 2 == 0 else list(reversed(checkouts)):
            row = drain(urls[name], checkouts[name], args.tasks, shlex.split(args.worker_args))
            rows.append({"checkout": name, "round": round_, **row})
            print(name, {key: round(value, 2) for key, value in row.items()}, flush=True)
    for name in checkouts:
        mine = [row for row in rows if row["checkout"] == name]
        print(
            f"{name}: median CPU {statistics.median(r['cpu_us_per_task'] for r in mine):.1f} us/task,"
            f" median wall {statistics.median(r['wall_s'] for r in mine):.2f} s"
        )
    results.save_bars(
        "drain_cpu",
        rows,
        about={"tasks": args.tasks, "worker_args": args.worker_args, "baseline": str(args.baseline)},
        title=f"{args.tasks:,} no-ops, runworker --processes 2 --burst {args.worker_args}: CPU per task",
        label="checkout",
        value="cpu_us_per_task",
        unit="us of CPU per task",
    )


if __name__ == "__main__":
    main()
