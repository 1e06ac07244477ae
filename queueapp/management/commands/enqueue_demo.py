"""Enqueue a few demo tasks (taskqueue_project.demo_tasks) and print their ids."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from taskqueue_project import demo_tasks


class Command(BaseCommand):
    help = "Enqueue demo tasks: additions, welcome emails and a flaky report that retries."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=3, help="How many of each demo task (default 3).")

    def handle(self, *args: Any, count: int, **options: Any) -> None:
        if count < 1:
            raise CommandError("--count must be at least 1")
        with transaction.atomic():
            results = [
                *(demo_tasks.add.enqueue(i, i) for i in range(count)),
                *(demo_tasks.send_welcome_email.enqueue(user_id=i) for i in range(count)),
                *(demo_tasks.flaky_report.enqueue(i) for i in range(count)),
            ]
        for result in results:
            self.stdout.write(f"enqueued id={result.id} task={result.task.name} status={result.status}")
