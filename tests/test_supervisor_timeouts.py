"""The supervisor's timeout watcher asks the database only while a child runs a task with a timeout:
a child that claims one says so by SIGUSR1, and the watcher stops asking once none is running."""

from __future__ import annotations

import os
import signal
import subprocess
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
    sup = Supervisor(WorkerConfig.from_settings(processes=1))
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
