"""A worker cut off from its database without a word (packets dropped, nothing closed): it notices by
its lease, stops, exits 4 within STALE_AFTER and a few seconds, and nothing it sent in the meantime
changes a row when the network comes back. Through tests/proxy.py, against real worker processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from queueapp import models, store
from tests import tasks
from tests.helpers import WorkerProcess, child_pids, database_url, wait_for
from tests.proxy import SilentProxy
from workers.exitcodes import ExitCode
from workers.stager import Stager

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

Start = Callable[..., WorkerProcess]
STALE_AFTER = 3.0
CUT_OFF_ENV = {"TASKQUEUE_STALE_AFTER": str(STALE_AFTER)}


@pytest.fixture
def proxy(raw_conn: psycopg.Connection) -> Iterator[SilentProxy]:
    """Closed after the workers started through it are killed (ask for it first), and only once the
    server has ended every session that came through it."""
    proxy = SilentProxy(database_url())
    yield proxy
    proxy.close()
    wait_for(lambda: not proxied_sessions(raw_conn, proxy), timeout=20, message="proxied sessions to end")


def proxied_sessions(conn: psycopg.Connection, proxy: SilentProxy) -> list[Any]:
    """Server sessions of connections that came through the proxy."""
    ports = sorted(proxy.upstream_ports)
    return conn.execute("SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", [ports]).fetchall()


def snapshot(conn: psycopg.Connection) -> tuple[list[Any], list[Any]]:
    tasks_now = conn.execute("SELECT * FROM queueapp_task ORDER BY id").fetchall()
    workers_now = conn.execute("SELECT * FROM queueapp_worker ORDER BY id").fetchall()
    return tasks_now, workers_now


def running_under(conn: psycopg.Connection) -> set[Any]:
    return {
        worker for (worker,) in conn.execute("SELECT worker_id FROM queueapp_task WHERE status = 'RUNNING'")
    }


def test_a_worker_cut_off_silently_exits_4_within_stale_after_and_changes_nothing_once_healed(
    proxy: SilentProxy,
    workers: Start,
    side_effects: psycopg.Connection,
    raw_conn: psycopg.Connection,
    tmp_path: Path,
) -> None:
    go = tmp_path / "return now"
    returns_while_cut = tasks.record_then_wait_for_file.enqueue("returns while cut off", str(go))
    checks_for_cancel = tasks.record_then_wait_for_cancel.enqueue("checks for a cancel")
    worker = workers("--concurrency", "2", "--grace", "60", url=proxy.url, env=CUT_OFF_ENV)
    wait_for(
        lambda: side_effects.execute("SELECT count(*) FROM test_side_effect").fetchone() == (2,),
        timeout=20,
        message="both tasks running in the worker",
    )
    (worker_id,) = running_under(raw_conn)

    proxy.cut()
    cut_at = time.monotonic()
    go.touch()  # the first task returns now, well before the lease ends (a sleep could outlast it)
    # Its lease ends at most STALE_AFTER after its last beat; running tasks then get a heartbeat
    # interval (0.3 s here), not --grace.
    code = worker.wait(STALE_AFTER + 5)
    took = time.monotonic() - cut_at
    output = worker.output()
    assert code == ExitCode.LEASE_EXPIRED, output
    assert took < STALE_AFTER + 2, f"exited {took:.1f} s after the cut"
    assert "lease_expired" in output
    # The first task returned during the cut (its success went into a round that never came back);
    # the other was asked to stop, but was stuck on its own query, and was left behind.
    assert "reason=lease_expired tasks_asked_to_stop=1 tasks_abandoned=1" in output

    # The rest of the fleet: a reaper writes it off and takes its tasks back; they are made ready.
    reaped = wait_for(
        lambda: store.reap_workers(stale_after=STALE_AFTER, backoff_base=0.05, backoff_max=0.1).workers_lost,
        timeout=STALE_AFTER + 2,
        message="the cut-off worker to be reaped",
    )
    assert reaped == 1
    wait_for(
        lambda: Stager().run_once() == 0 and models.Task.objects.filter(status="READY").count() == 2,
        timeout=5,
        message="its two tasks back to READY",
    )
    before = snapshot(raw_conn)

    proxy.heal()
    # Everything it had sent is delivered now, late; each server backend that received it ends once
    # it has read it all (and the worker's end of the connection).
    wait_for(proxy.idle, timeout=20, message="the proxy to deliver all it held and close")
    wait_for(
        lambda: not proxied_sessions(raw_conn, proxy),
        timeout=20,
        message="the cut-off worker's server sessions to end",
    )
    assert snapshot(raw_conn) == before
    assert models.Worker.objects.get(id=worker_id).state == "LOST"
    assert {row.attempts for row in models.Task.objects.all()} == {1}
    assert models.Task.objects.get(id=int(returns_while_cut.id)).status == "READY"
    assert models.Task.objects.get(id=int(checks_for_cancel.id)).status == "READY"


def test_a_supervisor_replaces_a_child_whose_lease_ran_out(
    proxy: SilentProxy, workers: Start, raw_conn: psycopg.Connection
) -> None:
    supervisor = workers("--processes", "2", "--concurrency", "1", url=proxy.url, env=CUT_OFF_ENV)
    wait_for(
        lambda: models.Worker.objects.filter(state="ALIVE").count() == 2, timeout=30, message="2 children"
    )
    first_children = set(models.Worker.objects.values_list("id", flat=True))
    pids = child_pids(supervisor.pid)

    proxy.cut()
    wait_for(
        lambda: all(exited(pid) for pid in pids),
        timeout=STALE_AFTER + 5,
        message="both children to exit on their lease",
    )
    proxy.heal()
    wait_for(
        lambda: models.Worker.objects.filter(state="ALIVE").exclude(id__in=first_children).count() == 2,
        timeout=30,
        message="2 fresh children",
    )
    assert supervisor.output().count("reason=lease_expired") >= 2
    done = tasks.add.enqueue(2, 3)
    wait_for(
        lambda: models.Task.objects.get(id=int(done.id)).status == "SUCCESSFUL",
        timeout=20,
        message="a task run by the fresh children",
    )


def exited(pid: int) -> bool:
    """Gone, or a zombie its parent has not waited for yet."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
