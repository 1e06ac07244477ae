"""The Python that `enqueue_many` spends on each row, step by step, without the database.

Per row of a bulk enqueue the backend checks and encodes the call and formats its COPY line; the
TaskResult it returns is built only when the results are read, and `task_enqueued` is sent only when
someone hears it (both timed here too, as what they cost when they happen). Each step is timed alone
(`timeit`, best of 5), then the steps every row takes together for 1,000 rows, as `enqueue_tasks`
runs them between its writes. Run it in two
checkouts to compare them: the figures are CPU of one thread, steadier than any end-to-end rate here.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python -m bench.enqueue_rows
"""

from __future__ import annotations

import datetime as dt
import timeit
from collections.abc import Callable

from bench.common import scratch_database


def per_call(function: Callable[[], object], number: int = 100_000) -> float:
    """Microseconds per call, best of 5."""
    return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e6


def main() -> None:
    with scratch_database("bench_enqueue_rows"):
        from django.tasks import task_backends
        from django.tasks.signals import task_enqueued

        from bench import tasks
        from queueapp import store
        from queueapp.backend import PostgresBackend
        from queueapp.store.tasks import _copy_line

        backend = task_backends["default"]
        assert isinstance(backend, PostgresBackend)
        task = tasks.noop
        fields = backend._task_fields(task)
        now = dt.datetime.now(tz=dt.UTC)
        now_text = now.isoformat()
        new = backend._new_task(fields, task, (5,), {})
        inserted = store.Inserted(5, now, now)
        result = backend.enqueued_result(task, new, inserted)

        def pipeline() -> None:
            kept = []
            for i in range(1000):
                row = backend._new_task(fields, task, (i,), {})
                _copy_line(i, row, now_text, True)
                kept.append(row)

        steps: dict[str, Callable[[], object]] = {
            "encode the arguments (5,), {}": lambda: store.encode_arguments((5,), {}),
            "check and encode the call (_new_task)": lambda: backend._new_task(fields, task, (5,), {}),
            "its COPY line": lambda: _copy_line(5, new, now_text, True),
            "its TaskResult, when read": lambda: backend.enqueued_result(task, new, inserted, stored=True),
            "task_enqueued.send, when heard": lambda: task_enqueued.send(type(backend), task_result=result),
        }
        for label, step in steps.items():
            print(f"{label:40s} {per_call(step):6.2f} us")
        print(f"{"every row's steps, per row of 1,000":40s} {per_call(pipeline, number=20) / 1000:6.2f} us")


if __name__ == "__main__":
    main()
