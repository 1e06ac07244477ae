"""`manage.py schedules`: every schedule with its next run and last run."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from queueapp import reads


class Command(BaseCommand):
    help = "List schedules (periodic tasks) with their next run and their last run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="One JSON document, as GET /api/schedules.")

    def handle(self, *args: Any, **options: Any) -> None:
        shown = [reads.schedule_out(schedule) for schedule in reads.list_schedules()]
        if options["json"]:
            self.stdout.write(json.dumps({"schedules": shown}, default=str, indent=2))
            return
        if not shown:
            self.stdout.write("No schedules.")
            return
        for item in shown:
            last = item["last_run"]
            next_run = item["next_run_at"].isoformat() if item["next_run_at"] else "disabled"
            last_run = (
                f"{last['tick_at'].isoformat()} task {last['task_id']} {last['status']}" if last else "never"
            )
            self.stdout.write(
                f"{item['name']}  {item['cron']} ({item['description']}, {item['timezone']})  "
                f"task={item['task']} queue={item['queue']} source={item['source']}\n"
                f"    next: {next_run}    last: {last_run}"
            )
