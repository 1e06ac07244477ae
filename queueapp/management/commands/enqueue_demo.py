"""Enqueue demo tasks (taskqueue_project.demo_tasks), print their ids, and say where to watch."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from taskqueue_project import demo_tasks

WATCH = """
Watch them:
  tasks     {base}/admin/queueapp/task/   (filter by status; open one for its errors and result)
  overview  {base}/admin/queueapp/task/overview/   (queues, per-minute charts, live workers)
  workers   {base}/admin/queueapp/worker/
  worker log (the terminal of make run): a line per failed attempt, `task_finished id=...
            task=...always_fails attempt=1 ... outcome=retry`, then outcome=FAILED; successes
            too with LOG_LEVEL=DEBUG.
No login yet? make manage ARGS=createsuperuser
Try: cancel a slow task from the console, or kill the worker (kill -9) while slow tasks run and start
it again: the reaper requeues them (docs/operations.md)."""


class Command(BaseCommand):
    help = (
        "Enqueue demo tasks: additions, welcome emails, a flaky report, slow tasks, tasks that retry "
        "then succeed, and tasks that always fail; then say where to watch them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=3, help="How many of each demo task (default 3).")
        parser.add_argument(
            "--slow-seconds", type=float, default=10.0, help="How long each slow task sleeps (default 10)."
        )
        parser.add_argument(
            "--base-url", default="http://127.0.0.1:8000", help="Where the console is served (make run's)."
        )

    def handle(self, *args: Any, count: int, slow_seconds: float, base_url: str, **options: Any) -> None:
        if count < 1:
            raise CommandError("--count must be at least 1")
        if not 0 <= slow_seconds <= 3600:
            raise CommandError("--slow-seconds must be from 0 to 3600")
        with transaction.atomic():
            results = [
                *(demo_tasks.add.enqueue(i, i) for i in range(count)),
                *(demo_tasks.send_welcome_email.enqueue(user_id=i) for i in range(count)),
                *(demo_tasks.flaky_report.enqueue(i) for i in range(count)),
                *(demo_tasks.slow.enqueue(slow_seconds) for _ in range(count)),
                *(demo_tasks.retry_then_succeed.enqueue() for _ in range(count)),
                *(demo_tasks.always_fails.enqueue() for _ in range(count)),
            ]
        for result in results:
            self.stdout.write(f"enqueued id={result.id} task={result.task.name} status={result.status}")
        self.stdout.write(WATCH.format(base=base_url.rstrip("/")))
