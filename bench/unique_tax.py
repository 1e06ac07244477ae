"""What unique keys cost tasks that have none: enqueue, claim and finish with and without the
unique indexes, in one process, round by round.

Rounds alternate (ABBA) between the schema as migrated (the unique partial index on live tasks and the
partial (unique_key, finished_at) index on history) and the same schema with both indexes dropped:
the column itself stays (a NULL in a row that already has a null bitmap). Each round enqueues
tasks one per transaction through `task.enqueue()`, then claims and finishes them all through the
worker's own rounds (WorkerSession.round: finish + claim of 10, one transaction each), and history
is emptied before the next. The ratio is the median over neighbouring pairs of the time without
over the time with, i.e. throughput with the indexes over throughput without: below 1.0 means
the indexes cost something. The schedule tables are not touched by tasks.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python -m bench.unique_tax
"""

from __future__ import annotations

import statistics
import time
import uuid

from bench.common import scratch_database

INDEXES = {
    "task_live_unique_key": "CREATE UNIQUE INDEX task_live_unique_key ON queueapp_task_live (unique_key) "
    "WHERE unique_key IS NOT NULL",
    "task_history_unique_key_idx": "CREATE INDEX task_history_unique_key_idx ON queueapp_task_history "
    "(unique_key, finished_at) WHERE unique_key IS NOT NULL",
}


def set_indexes(present: bool) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for name, create in INDEXES.items():
            cursor.execute(f"DROP INDEX IF EXISTS {name}")
            if present:
                cursor.execute(create)
        cursor.execute("TRUNCATE queueapp_task_live, queueapp_task_history")
        cursor.execute("VACUUM ANALYZE queueapp_task_live")


def one_round(n: int) -> tuple[float, float]:
    """Seconds to enqueue n tasks one by one, and to claim and finish them all."""
    from bench import tasks
    from queueapp import models, store

    started = time.perf_counter()
    for i in range(n):
        tasks.noop.enqueue(i)
    enqueued = time.perf_counter() - started
    worker = models.Worker.objects.create(
        id=uuid.uuid4(), hostname="bench", pid=1, queues=["default"], concurrency=10
    )
    session = store.WorkerSession(worker_id=worker.id, queues=["default"])
    done: list[store.Success] = []
    started = time.perf_counter()
    while True:
        _, claimed = session.round(done, 10)
        if not claimed:
            break
        done = [store.Success(row.id, row.attempts, "null") for row in claimed]
    drained = time.perf_counter() - started
    session.close()
    return enqueued, drained


def main(rounds: int = 60, n: int = 500) -> None:
    with scratch_database("bench_unique_tax"):
        times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for round_number in range(rounds):
            # ABBA: which side goes first alternates, so that an order effect cancels out.
            for present in (False, True) if round_number % 2 == 0 else (True, False):
                set_indexes(present)
                times[present].append(one_round(n))
        set_indexes(True)
    for phase, label in ((0, "enqueue, one per transaction"), (1, "claim 10 + finish, per round")):
        without = [t[phase] for t in times[False]]
        with_ = [t[phase] for t in times[True]]
        ratio = statistics.median(w / u for w, u in zip(without, with_, strict=True))
        print(
            f"{label}: {n / statistics.median(without):,.0f}/s without the unique indexes, "
            f"{n / statistics.median(with_):,.0f}/s with them; paired ratio (with/without) {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
