"""The benchmark suite's own parts that could silently measure the wrong thing."""

from __future__ import annotations

import pytest

from bench import drain, profile_worker
from bench.common import rate_figure
from queueapp import models
from tests.helpers import database_url


@pytest.mark.django_db(transaction=True)
def test_the_pgbench_ceiling_runs_the_workers_claim_and_marks_every_task_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = drain.pgbench_script()
    assert "FOR UPDATE SKIP LOCKED" in script
    assert "ORDER BY priority DESC, run_after, id LIMIT 100" in script
    monkeypatch.setenv("DATABASE_URL", database_url())
    assert drain.pgbench(400, clients=2) > 0  # exits unless all 400 rows are SUCCESSFUL
    assert models.Task.objects.count() == 0  # and leaves the table empty for the next step


def test_the_profile_summary_keeps_the_workers_samples_and_drops_start_up() -> None:
    folded = "\n".join(
        [
            "<module> (manage.py:1);_find_and_load (<frozen importlib._bootstrap>:1) 50",
            "Worker.loop (workers/worker.py:160);WorkerSession.round (queueapp/store/session.py:90) 30",
            "Worker.run_tasks (workers/worker.py:234);Executor.run (workers/executor.py:95) 10",
        ]
    )
    total, hot, trimmed = profile_worker.summarize(folded)
    assert total == 40
    assert dict(hot)["Worker.loop (workers/worker.py)"] == 30
    assert dict(hot)["Executor.run (workers/executor.py)"] == 10
    assert "importlib" not in trimmed


def test_a_rate_meets_its_target_only_at_or_above_the_ratio() -> None:
    assert rate_figure("x", 80, 100, "ceiling", at_least=0.8).met
    assert not rate_figure("x", 79, 100, "ceiling", at_least=0.8).met
    assert rate_figure("x", 1, 100, "ceiling", at_least=None).target == "-"
