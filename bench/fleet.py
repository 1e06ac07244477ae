"""Fleet scale: SUPERVISORS x `runworker --processes 2 --concurrency 1`, idle on one queue, one task
every 0.5 s for 30 s; ours against a baseline checkout (main) in one run, rounds alternating.

    python -m bench.fleet --baseline CHECKOUT_OF_MAIN [--supervisors 20] [--seconds 30] [--rounds 1]

A throwaway cluster of its own (taskqueue_project.devdb: durable defaults, fsync and synchronous
commit on) with pg_stat_statements; each checkout gets a database, migrated by that checkout, and
its own fleet, started from that checkout. Per fleet, over the window in which the tasks come (and
"net": less what the fleet spent in an idle window of the same length just before, its polls):
- claims per task: calls of the claim statements (pg_stat_statements, reset at the window's start);
- fleet CPU per task: user + system time of every fleet process (/proc/PID/stat) over the window;
- pickup p50/p99: started_at - enqueued_at, by the database clock;
- connections per supervisor and per child: the database's client backends mapped to processes by
  their client port (/proc/net/tcp, /proc/PID/fd); a socket a supervisor holds is the supervisor's
  (its forked children inherit its sockets but never use them);
- fleet PSS: Pss of /proc/PID/smaps_rollup, summed over supervisors and children.
Results go to bench/results/fleet-<time>.json, .csv and .png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results
from bench.common import ROOT, checkout_database, percentile, worker_env
from taskqueue_project import devdb

CLAIMS = "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE dbid = %s AND query LIKE %s"
CLAIM_TEXT = "%attempts = t.attempts + %"
"""The claim statements' SET clause (constants are $n in pg_stat_statements' text)."""
TICK = os.sysconf("SC_CLK_TCK")


def cluster(tmp: Path) -> str:
    """A throwaway cluster with pg_stat_statements and room for a heavy fleet's connections."""
    data = tmp / "data"
    tmp.chmod(0o711)  # the postgres user walks down to its data directory
    devdb.init(data, devdb.find_bindir())
    with open(data / "postgresql.conf", "a") as conf:
        conf.write("shared_preload_libraries = 'pg_stat_statements'\nmax_connections = 500\n")
    return devdb.start(data)


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICK


def pss_mib(pids: list[int]) -> float:
    kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                kib += int(line.split()[1])
    return kib / 1024


def socket_holders(pids: list[int]) -> dict[int, set[int]]:
    """Socket inode -> the fleet processes holding it."""
    holders: dict[int, set[int]] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                holders.setdefault(int(target[8:-1]), set()).add(pid)
    return holders


def client_inodes(server_port: int) -> dict[int, int]:
    """Local TCP port -> socket inode, for this host's IPv4 sockets to server_port (an ephemeral port
    may be in use at once towards another server: the shared cluster's clients)."""
    ports = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == server_port:
            ports[int(fields[1].split(":")[1], 16)] = int(fields[9])
    return ports


def connections(conn: psycopg.Connection[Any], supervisors: list[int], children: list[int]) -> Counter[str]:
    """The database's client backends, by who holds their socket: supervisor, child or unknown."""
    rows = conn.execute(
        "SELECT client_port FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    ).fetchall()
    holders, inodes = socket_holders([*supervisors, *children]), client_inodes(conn.info.port)
    counts: Counter[str] = Counter()
    for (port,) in rows:
        held = holders.get(inodes.get(port, -1), set())
        counts["supervisor" if held & set(supervisors) else "child" if held else "other"] += 1
    return counts


def ready_fleet(conn: psycopg.Connection[Any], processes: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    query = "SELECT count(*) FROM queueapp_worker WHERE state = 'ALIVE' AND waiting"
    while conn.execute(query).fetchone()[0] < processes:  # type: ignore[index]
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {processes} idle worker processes")
        time.sleep(0.5)


def enqueue(seconds: float, every: float) -> None:
    """In a subprocess (DATABASE_URL: the fleet's database): one no-op every `every` seconds."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskqueue_project.settings")
    django.setup()
    from bench import tasks

    due = time.monotonic()
    for _ in range(round(seconds / every)):
        tasks.noop.enqueue()
        due += every
        time.sleep(max(due - time.monotonic(), 0))


def measure(url: str, checkout: Path, *, supervisors: int, seconds: float, every: float) -> dict[str, Any]:
    cmd = [sys.executable, "manage.py", "runworker", "--processes", "2", "--concurrency", "1"]
    env = worker_env(url)
    fleet = [subprocess.Popen(cmd, cwd=checkout, env=env) for _ in range(supervisors)]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            ready_fleet(conn, 2 * supervisors)
            time.sleep(3)  # start-up rounds done
            sups = [p.pid for p in fleet]
            kids = [kid for pid in sups for kid in children_of(pid)]
            oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]  # type: ignore[index]
            conn.execute("TRUNCATE queueapp_task_live, queueapp_task_history")
            # The idle window first: what the fleet spends polling with nothing to do.
            conn.execute("SELECT pg_stat_statements_reset()")
            idle_cpu = cpu_seconds([*sups, *kids])
            time.sleep(seconds)
            idle_cpu = cpu_seconds([*sups, *kids]) - idle_cpu
            idle_claims = conn.execute(CLAIMS, [oid, CLAIM_TEXT]).fetchone()[0]  # type: ignore[index]
            conn.execute("SELECT pg_stat_statements_reset()")
            cpu = cpu_seconds([*sups, *kids])
            runner = [sys.executable, "-m", "bench.fleet", "--enqueue", str(seconds), str(every)]
            subprocess.run(
                runner,
                cwd=ROOT,
                env={**env, "DJANGO_SETTINGS_MODULE": "taskqueue_project.settings"},
                check=True,
            )
            tasks = round(seconds / every)
            count = "SELECT count(*) FROM queueapp_task WHERE status = 'SUCCESSFUL'"
            while conn.execute(count).fetchone()[0] < tasks:  # type: ignore[index]
                time.sleep(0.1)
            cpu = cpu_seconds([*sups, *kids]) - cpu
            claims = conn.execute(CLAIMS, [oid, CLAIM_TEXT]).fetchone()[0]  # type: ignore[index]
            pickups = [
                float(row[0])
                for row in conn.execute(
                    "SELECT extract(epoch FROM started_at - enqueued_at) * 1000 FROM queueapp_task"
                ).fetchall()
            ]
            held = connections(conn, sups, kids)
            pss = pss_mib([*sups, *kids])
    finally:
        for process in fleet:
            process.terminate()
        for process in fleet:
            process.wait(120)
    return {
        "claims_per_task": float(claims) / tasks,
        "claims_per_task_net": float(claims - idle_claims) / tasks,
        "cpu_ms_per_task": cpu * 1000 / tasks,
        "cpu_ms_per_task_net": (cpu - idle_cpu) * 1000 / tasks,
        "pickup_p50_ms": percentile(pickups, 50),
        "pickup_p99_ms": percentile(pickups, 99),
        "connections_per_supervisor": held["supervisor"] / supervisors,
        "connections_per_child": held["child"] / (2 * supervisors),
        "connections_other": held["other"],
        "fleet_pss_mib": pss,
        "children": len(kids),
        "tasks": tasks,
    }


def main() -> None:
    if "--enqueue" in sys.argv:
        at = sys.argv.index("--enqueue")
        enqueue(float(sys.argv[at + 1]), float(sys.argv[at + 2]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of main")
    parser.add_argument("--supervisors", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="taskqueue-fleet-"))
    rows: list[dict[str, Any]] = []
    load = os.getloadavg()
    try:
        base_url = cluster(tmp)
        checkouts = {"ours": ROOT, "baseline": args.baseline.resolve()}
        urls = {
            name: checkout_database(base_url, f"fleet_{name}", path, extensions=("pg_stat_statements",))
            for name, path in checkouts.items()
        }
        for round_ in range(args.rounds):
            order = list(checkouts) if round_ % 2 == 0 else list(reversed(checkouts))
            for name in order:
                row = measure(
                    urls[name],
                    checkouts[name],
                    supervisors=args.supervisors,
                    seconds=args.seconds,
                    every=args.every,
                )
                rows.append({"checkout": name, "round": round_, **row})
                print(
                    name, {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True
                )
    finally:
        devdb.stop(tmp / "data")
        shutil.rmtree(tmp, ignore_errors=True)
    for name in ("ours", "baseline"):
        mine = [row for row in rows if row["checkout"] == name]
        print(name, "median claims/task", statistics.median(row["claims_per_task"] for row in mine))
    results.save_bars(
        "fleet",
        rows,
        about={
            "supervisors": args.supervisors,
            "seconds": args.seconds,
            "every": args.every,
            "load_before": load,
            "load_after": os.getloadavg(),
        },
        title=f"{args.supervisors} x runworker --processes 2 --concurrency 1: claims per task",
        label="checkout",
        value="claims_per_task",
        unit="claims per task",
    )


if __name__ == "__main__":
    main()
