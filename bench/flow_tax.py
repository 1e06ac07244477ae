"""What queues without flow control pay for it, against a baseline checkout (main), as ratios from one
run: python -m bench.flow_tax --baseline /work/main

- claim: the plain claim statement, ours against the baseline's (same scratch database, 10,000 READY
  tasks, claims of 10, prepared, after claim_plan, each rolled back), in alternating rounds;
- drain: N no-ops drained by 2 worker processes, each checkout's own `runworker` on a scratch
  database its own migrations made, timed by the database clock (bench.drain), in alternating
  rounds (ours first, then the baseline first, ...), so that the machine's drift falls on both.

Target for both: within 10% of the baseline. The baseline needs bench.drain.drain_with_workers and a
queries.sql with claim_tasks (any checkout since the live/history split); both claims run after
this checkout's plan setting (claim_plan).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

from bench.claim_cost import FILL
from bench.common import ROOT, clear_tasks, scratch_database
from bench.flow_cost import timed_ms

DRAIN = """
from bench.common import scratch_database
from bench.drain import drain_with_workers
with scratch_database({name!r}):
    print(drain_with_workers({n}, {processes}, {concurrency}))
"""


def claim_rounds(baseline: Path, rounds: int, samples: int) -> tuple[list[float], list[float]]:
    """Median ms of our plain claim and of the baseline's, per round (in the current scratch database)."""
    from queueapp.sql import QUERIES, load

    theirs = load((baseline / "queueapp" / "sql" / "queries.sql").read_text())
    worker_id = uuid.uuid4()
    params = {"worker_id": worker_id, "queues": ["default"], "limit": 10, "flow_epoch": 0}
    ours_ms: list[float] = []
    theirs_ms: list[float] = []
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True, prepare_threshold=0) as conn:
        conn.execute(
            "INSERT INTO queueapp_worker (id, hostname, pid, queues, concurrency, state, started_at,"
            " last_heartbeat_at) VALUES (%s, 'bench', 0, '{default}', 10, 'ALIVE', now(), now())",
            [worker_id],
        )
        # A baseline from before migration 0010 compares its epoch on the worker row.
        conn.execute(
            "ALTER TABLE queueapp_worker ADD COLUMN IF NOT EXISTS flow_epoch integer NOT NULL DEFAULT 0"
        )
        clear_tasks()
        conn.execute(FILL, [10_000])
        conn.execute("VACUUM ANALYZE queueapp_task_live")
        for _ in range(rounds):
            ours_ms.append(timed_ms(conn, [QUERIES["claim_tasks"]], params, samples))
            theirs_ms.append(timed_ms(conn, [theirs["claim_tasks"]], params, samples))
        clear_tasks()
    return ours_ms, theirs_ms


def drain(checkout: Path, n: int, processes: int, concurrency: int) -> float:
    """Tasks/s of one drain by checkout's own code, in a scratch database of its own."""
    code = DRAIN.format(name="taskqueue_bench_flow_tax", n=n, processes=processes, concurrency=concurrency)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=checkout, env=os.environ, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"drain in {checkout} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return float(done.stdout.split()[-1])


def drain_rounds(baseline: Path, rounds: int, n: int) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    theirs: list[float] = []
    for round_ in range(rounds):
        order = [(ROOT, ours), (baseline, theirs)]
        for checkout, rates in order if round_ % 2 == 0 else reversed(order):
            rates.append(drain(checkout, n, processes=2, concurrency=16))
    return ours, theirs


def report(what: str, ours: list[float], theirs: list[float], unit: str, *, lower_is_better: bool) -> None:
    ratio = statistics.mean(ours) / statistics.mean(theirs)
    cost = ratio if lower_is_better else 1 / ratio
    rounds = ", ".join(f"{a:,.3f}/{b:,.3f}" for a, b in zip(ours, theirs, strict=True))
    print(f"{what}: ours {statistics.mean(ours):,.3f} {unit}, baseline {statistics.mean(theirs):,.3f} {unit}")
    print(f"  ratio ours/baseline {ratio:.3f} (cost {cost:.3f}x, target <= 1.10x); rounds {rounds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of main")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--samples", type=int, default=300, help="claims per claim round")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per drain")
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL")
    with scratch_database("taskqueue_bench_flow_claim"):
        ours, theirs = claim_rounds(args.baseline.resolve(), args.rounds, args.samples)
    os.environ["DATABASE_URL"] = base or ""
    report("plain claim of 10 at 10,000 READY", ours, theirs, "ms", lower_is_better=True)
    ours, theirs = drain_rounds(args.baseline.resolve(), args.rounds, args.tasks)
    report(
        f"drain of {args.tasks:,} no-ops, 2 processes x 16 threads",
        ours,
        theirs,
        "tasks/s",
        lower_is_better=False,
    )


if __name__ == "__main__":
    main()
