"""The benchmark suite's own parts that could silently measure the wrong thing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import drain, profile_worker
from bench.common import rate_figure
from queueapp import models
from tests.helpers import ROOT, database_url


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


@pytest.mark.django_db(transaction=True)
def test_a_small_scaling_run_measures_verified_tasks_and_saves_json_csv_and_a_chart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bench import results, scaling

    monkeypatch.setenv("DATABASE_URL", database_url())
    monkeypatch.setattr(scaling, "LATENCY_TASKS", 5)
    monkeypatch.setattr(scaling, "NOOP_TASKS", 50)
    monkeypatch.setattr(scaling, "SLEEP_TASKS_PER_SLOT", 2)
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    row = scaling.measure("threads", 2, 0.05)
    assert row["mode"] == "threads"
    assert row["workers"] == 2
    assert row["noop_tasks_per_s"] > 0
    assert row["sleep_ideal_tasks_per_s"] == 40.0  # 2 slots, each a task per 50 ms at best
    assert 0 < row["sleep_tasks_per_s"] <= 42.0
    assert 0 < row["pickup_p50_ms"] <= row["pickup_p95_ms"] <= row["pickup_max_ms"]
    assert models.Task.objects.count() == 0  # every step verified its tasks and emptied the tables

    rows = [row, {**row, "mode": "processes"}]
    base = results.save("scaling", rows, about={"machine": "test"}, when="T")
    assert json.loads(base.with_suffix(".json").read_text())["rows"] == rows
    assert base.with_suffix(".csv").read_text().splitlines()[0].startswith("mode,workers,noop_tasks_per_s")
    png = scaling.chart(rows, base.with_suffix(".png"), sleep=0.05, about="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.django_db(transaction=True)
def test_a_drain_cpu_round_runs_every_task_from_the_checkout_and_empties_the_tables() -> None:
    from bench import drain_cpu

    row = drain_cpu.drain(database_url(), ROOT, 50, ["--concurrency", "2"])
    assert row["wall_s"] > 0
    assert row["cpu_us_per_task"] > 0
    assert models.Task.objects.count() == 0  # exits unless all 50 were SUCCESSFUL, then truncates


def test_bench_results_are_not_tracked() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "bench/results/scaling-x.json"], cwd=ROOT, capture_output=True
    )
    assert ignored.returncode == 0
