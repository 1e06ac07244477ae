"""The supervisor's timeout watcher asks the database only while a child runs a task with a timeout:
a child that claims one says so by SIGUSR1, and the watcher stops asking once none is running."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from queueapp import store
from tests import tasks
from tests.conftest import make_worker
from tests.helpers import end_task
from workers.config import WorkerConfig
from workers.supervisor import Child, Supervisor

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    """A supervisor with one child: a real process standing for a worker (registered) that never
    claims by itself, and the SIGUSR1 handler run() installs."""
    sup = Supervisor(WorkerConfig.from_settings(processes=1), check_interval=0)
    worker = make_worker(["default"])
    sup.children = [Child(worker.id, subprocess.Popen(["sleep", "60"]))]
    previous = signal.signal(signal.SIGUSR1, sup.handle_timed_task)
    try:
        yield sup
    finally:
        signal.signal(signal.SIGUSR1, previous)
        for child in sup.children:
            child.process.kill()
            child.process.wait()


def queries_of_one_pass(sup: Supervisor) -> int:
    with CaptureQueriesContext(connection) as captured:
        sup.kill_timed_out()
    return len(captured)


def test_the_watcher_asks_only_after_a_child_said_it_runs_a_task_with_a_timeout(
    supervisor: Supervisor,
) -> None:
    child = supervisor.children[0]
    assert queries_of_one_pass(supervisor) == 0  # idle: not a query
    task_id = int(tasks.add.using(timeout=60).enqueue(1, 1).id)
    assert [row.id for row in store.claim_tasks(worker_id=child.worker_id, queues=["default"], limit=1)] == [
        task_id
    ]
    assert queries_of_one_pass(supervisor) == 0  # claimed, but nobody said so yet

    os.kill(os.getpid(), signal.SIGUSR1)  # what the child does on claiming it
    assert queries_of_one_pass(supervisor) == 1
    assert queries_of_one_pass(supervisor) == 1  # still running: asked every pass
    assert child.process.poll() is None  # not late: not killed

    end_task(task_id, "SUCCESSFUL")
    assert queries_of_one_pass(supervisor) == 1  # finds none running
    assert queries_of_one_pass(supervisor) == 0  # and stops asking


def test_a_burst_of_signals_makes_one_question_per_check_interval(supervisor: Supervisor) -> None:
    """A child signals every round that claims a timed task, and each signal wakes the loop: asked
    on each, a busy host's supervisor spun on the query."""
    supervisor.check_interval = 60
    child = supervisor.children[0]
    tasks.add.using(timeout=60).enqueue(1, 1)
    store.claim_tasks(worker_id=child.worker_id, queues=["default"], limit=1)
    asked = []
    for _ in range(3):
        os.kill(os.getpid(), signal.SIGUSR1)
        asked.append(queries_of_one_pass(supervisor))
    assert asked == [1, 0, 0]
    assert supervisor.timed_tasks.is_set()  # still watched: asked again when the interval is up
    assert 50 < supervisor.next_pass_in(housekeeping_due=3600) <= 60
    supervisor.next_timeout_check = 0.0  # the interval is up
    assert queries_of_one_pass(supervisor) == 1


def test_notifications_missed_end_the_supervisors_wait_and_its_poll_runs_next() -> None:
    """The listener says so from within the supervisor's wait (it reconnected): the children's poll
    runs at once, not when the wait would have ended (the next service, seconds away)."""
    sup = Supervisor(WorkerConfig.from_settings(processes=2))
    assert sup.child_poll is not None
    sup.housekeeping.due = [time.monotonic() + 600] * len(sup.housekeeping.services)
    sup.poll_children_soon()
    assert select.select([sup.woken], [], [], 0)[0] == [sup.woken]  # the wait ends now
    index = [service for service, _ in sup.housekeeping.services].index(sup.child_poll)
    assert sup.housekeeping.due[index] == 0.0
