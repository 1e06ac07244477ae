"""The performance suite: every figure next to its ceiling from the same run, then the table.

    make bench                                       (a throwaway cluster, then the other benches)
    DATABASE_URL=... .venv/bin/python bench/suite.py [--profile]

Runs in a scratch database of its own: enqueue (one per transaction, bulk), drain with 1 and 2
worker processes, pickup latency, worker memory over 200,000 tasks, and the claim's cost at 10,000
and 1,000,000 READY rows. Prints the table and appends it to docs/benchmarks.md with the date,
the versions and the machine. With --profile it also records the worker at full speed with py-spy
into docs/profiles/ (a flame graph and the hottest functions). The figures are also saved to
bench/results/ (JSON, CSV and a chart, not tracked).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results
from bench.common import ROOT, Figure, scratch_database

DOC = ROOT / "docs" / "benchmarks.md"


def table(figures: list[Figure]) -> str:
    lines = [
        "| measure | taskqueue | ceiling in the same run | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.what} | {f.figure} | {f.ceiling} | {f.ratio} | {f.target} | {'yes' if f.met else 'NO'} |"
        )
    return "\n".join(lines)


def settle() -> None:
    """Start each step from a vacuumed table, so that no step pays for the dead rows of the last."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE queueapp_task_live")
        cursor.execute("VACUUM ANALYZE queueapp_task_history")


def environment() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
            " current_setting('fsync'), current_setting('shared_buffers')"
        )
        server, sync_commit, fsync, shared_buffers = cursor.fetchone()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"Python {platform.python_version()}, Django {version('django')}, psycopg {version('psycopg')}, "
        f"PostgreSQL {server} (synchronous_commit={sync_commit}, fsync={fsync}, "
        f"shared_buffers={shared_buffers}); {os.cpu_count()} x {cpu}, {mem_kib / 1024**2:.0f} GiB, "
        f"Linux {platform.release()}"
    )


def ratio_value(text: str) -> float:
    """A Figure's ratio as a number: "45.3%" is 0.453, "1.2x" is 1.2."""
    return float(text.rstrip("%x")) / (100 if text.endswith("%") else 1)


def save_results(figures: list[Figure], about: str) -> Path:
    """The run's figures to bench/results/ (JSON, CSV) and a chart of each figure's ratio."""
    when = results.stamp()
    base = results.save("suite", [asdict(f) for f in figures], about={"machine": about}, when=when)
    results.bar_chart(
        base.with_suffix(".png"),
        title=f"taskqueue suite {when}: each figure / its ceiling in the same run (latency: x bare NOTIFY)",
        labels=[f.what for f in figures],
        values=[ratio_value(f.ratio) for f in figures],
        unit="x ceiling",
    )
    return base


def main() -> None:
    profile = "--profile" in sys.argv[1:]
    with scratch_database("taskqueue_bench_suite"):
        from bench import claim_cost, drain, enqueue, latency, memory, profile_worker, round_limits

        steps = [
            ("pickup latency", latency.figures),
            ("enqueue, one per transaction", lambda: [enqueue.one_per_transaction()]),
            ("bulk enqueue", lambda: [enqueue.bulk()]),
            ("drain", drain.figures),
            ("worker memory", memory.figures),
            ("claim cost", claim_cost.figures),
            ("round limits", round_limits.figures),
        ]
        figures: list[Figure] = []
        for name, step in steps:
            settle()
            print(f"... {name}", flush=True)
            for figure in step():
                print(f"    {figure.what}: {figure.figure} vs {figure.ceiling}: {figure.ratio}", flush=True)
                figures.append(figure)
        about = environment()
        profiled = profile_worker.record() if profile else ""
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = table(figures)
    print(f"\n{text}\n")
    saved = save_results(figures, about)
    print(f"saved {saved}.json, .csv and .png")
    section = f"\n### Suite run {when}\n\n{about}.\n\n{text}\n"
    if profiled:
        section += f"\n{profiled}\n"
    with DOC.open("a") as doc:
        doc.write(section)
    print(f"appended to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
