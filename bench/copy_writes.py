"""How many COPY lines `enqueue_many` sends per write, compared by paired rounds.

Each round enqueues 10,000 no-ops in batches of 1,000 (peerbench's bulk mode) once per write size,
in alternating order; a size's figure is the median over rounds of its rate divided by the first
size's rate in the same round. The server inserts what it has received while Python prepares the
next lines, but what it has still to insert when the COPY ends is waited for: the fewer lines the
last write holds, the shorter that wait.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python -m bench.copy_writes 500 150
"""

from __future__ import annotations

import statistics
import sys
import time

from bench.common import clear_tasks, scratch_database


def rate(batches: list[list[tuple[object, tuple[int], dict[str, object]]]]) -> float:
    from queueapp.backend import PostgresBackend

    clear_tasks()
    backend = batches[0][0][0].get_backend()  # type: ignore[attr-defined]
    assert isinstance(backend, PostgresBackend)
    started = time.perf_counter()
    for batch in batches:
        backend.enqueue_many(batch)  # type: ignore[arg-type]
    return sum(map(len, batches)) / (time.perf_counter() - started)


def main(sizes: list[int], rounds: int = 12) -> None:
    with scratch_database("bench_copy_writes"):
        from bench import tasks
        from queueapp.store import tasks as store_tasks

        batches = [
            [(tasks.noop, (i,), {}) for i in range(start, start + 1000)] for start in range(0, 10_000, 1000)
        ]
        rates: dict[int, list[float]] = {size: [] for size in sizes}
        for index in range(rounds):
            for size in sizes if index % 2 == 0 else sizes[::-1]:
                store_tasks._LINES_PER_WRITE = size
                rates[size].append(rate(batches))
        first = rates[sizes[0]]
        for size in sizes:
            paired = statistics.median(ours / theirs for ours, theirs in zip(rates[size], first, strict=True))
            median = statistics.median(rates[size])
            print(f"{size:5d} lines a write: {median:8,.0f} rows/s, {paired:.3f}x of {sizes[0]}")


if __name__ == "__main__":
    main([int(size) for size in sys.argv[1:]] or [500, 150])
