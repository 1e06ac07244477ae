"""The live table's claim-100 ceiling next to peerbench's raw one, in the same run.

    DATABASE_URL=... .venv/bin/python bench/ceiling.py [--rows 400000] [--clients 2]

Two pgbench drains on the same server, one after the other, each of --rows prefilled rows claimed
100 at a time and finished, with --clients clients, prepared statements:
- raw: peerbench's minimal table and scripts (../shared/peerbench/raw: schema.sql, drain_k100.sql),
  claim 100 by UPDATE ... SKIP LOCKED and mark them done by UPDATE;
- taskqueue: the worker's own claim statement on the live table and its own finish statement (the
  move to history), as bench/drain.py runs it.
Prints both rates and their ratio (target: taskqueue at least 60% of raw).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results
from bench.common import ROOT, scratch_database
from taskqueue_project.devdb import find_bindir

RAW = ROOT.parent / "shared" / "peerbench" / "raw"


def pgbench(url: str, script: str, transactions: int, clients: int) -> float:
    """pgbench's tps for script run `transactions` times by each of `clients` clients."""
    binary = shutil.which("pgbench") or str(find_bindir() / "pgbench")
    parts = urlsplit(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write(script)
        f.flush()
        command = [binary, "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients)]
        command += ["-t", str(transactions), "-f", f.name, "-h", parts.hostname or "127.0.0.1"]
        command += ["-p", str(parts.port or 5432), "-U", parts.username or "postgres", parts.path.lstrip("/")]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
    match = re.search(r"^tps = ([0-9.]+)", out.stdout, re.MULTILINE)
    if out.returncode != 0 or not match:
        sys.exit(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    return float(match.group(1))


def raw_rate(url: str, rows: int, clients: int) -> float:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((RAW / "schema.sql").read_text())
        conn.execute("INSERT INTO jobs (priority, payload) SELECT 0, g FROM generate_series(1, %s) g", [rows])
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("CHECKPOINT")
    tps = pgbench(url, (RAW / "drain_k100.sql").read_text(), rows // 100 // clients, clients)
    with psycopg.connect(url, autocommit=True) as conn:
        done = conn.execute("SELECT count(*) FILTER (WHERE status = 2) FROM jobs").fetchone()
        conn.execute("DROP TABLE jobs")
    if done != (rows,):
        sys.exit(f"raw drain finished {done} of {rows} rows")
    return tps * 100


def taskqueue_rate(url: str, rows: int, clients: int) -> float:
    import psycopg

    from bench.common import clear_tasks
    from bench.drain import PGBENCH_WORKER, fill, pgbench_script
    from queueapp import models

    models.Worker.objects.get_or_create(
        id=PGBENCH_WORKER,
        defaults={"hostname": "pgbench", "pid": 0, "queues": ["default"], "concurrency": 100},
    )
    fill(rows)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE queueapp_task_live")
        conn.execute("CHECKPOINT")
    tps = pgbench(url, pgbench_script(), rows // 100 // clients, clients)
    with psycopg.connect(url, autocommit=True) as conn:
        done = conn.execute(
            "SELECT count(*) FROM queueapp_task_history WHERE status = 'SUCCESSFUL'"
        ).fetchone()
    clear_tasks()
    if done != (rows,):
        sys.exit(f"taskqueue drain finished {done} of {rows} rows")
    return tps * 100


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--clients", type=int, default=2)
    opts = parser.parse_args()
    if not (RAW / "drain_k100.sql").exists():
        sys.exit(f"peerbench's raw scripts are not at {RAW}")
    with scratch_database("taskqueue_bench_ceiling") as url:
        raw = raw_rate(url, opts.rows, opts.clients)
        ours = taskqueue_rate(url, opts.rows, opts.clients)
    print(f"raw (peerbench drain k=100, {opts.clients} clients): {raw:,.0f} rows/s")
    print(f"taskqueue live table (worker's claim + finish):     {ours:,.0f} rows/s")
    print(f"ratio: {ours / raw:.0%} (target: at least 60%)")
    rows = [
        {"path": f"raw pgbench drain k=100, {opts.clients} clients", "rows_per_s": round(raw)},
        {"path": f"taskqueue live table claim + finish, {opts.clients} clients", "rows_per_s": round(ours)},
    ]
    results.save_bars(
        "ceiling",
        rows,
        about={"rows": opts.rows, "ratio": round(ours / raw, 3)},
        title=f"claim 100 + finish, {opts.rows:,} rows: {ours / raw:.0%} of the raw ceiling",
        label="path",
        value="rows_per_s",
        unit="rows/s",
    )


if __name__ == "__main__":
    main()
