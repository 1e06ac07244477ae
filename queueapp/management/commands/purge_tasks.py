"""Retention from cron: `manage.py purge_tasks --older-than 14d` drops the history partitions (days)
that lie wholly before the cutoff and deletes the rest of what is older in batches."""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueapp import models, store

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TERMINAL = [status.value for status in models.TERMINAL_STATUSES]


def parse_age(text: str) -> float:
    """'14d', '12h', '30m', '90s' or plain seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not match:
        raise CommandError(f"--older-than {text!r}: give a number with s, m, h or d, like 14d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class Command(BaseCommand):
    help = (
        "Delete finished tasks (and Idempotency-Keys, and the rows of workers stopped or lost) older than "
        "a cutoff: whole days of history at once, the rest in small batches. Also creates the history "
        "partitions of the days ahead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", required=True, help="Age since finishing, e.g. 14d, 12h, 3600.")
        parser.add_argument(
            "--status",
            default=",".join(TERMINAL),
            help=f"Comma-separated terminal statuses to delete (default {','.join(TERMINAL)}).",
        )
        parser.add_argument("--batch", type=int, default=5000, help="Rows per transaction (default 5000).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted.")

    def handle(
        self, *args: Any, older_than: str, status: str, batch: int, dry_run: bool, **options: Any
    ) -> None:
        age = parse_age(older_than)
        statuses = [s.strip().upper() for s in status.split(",") if s.strip()]
        wrong = [s for s in statuses if s not in TERMINAL]
        if wrong or not statuses:
            raise CommandError(
                f"--status may name only finished statuses ({', '.join(TERMINAL)}), not {wrong}"
            )
        if batch < 1:
            raise CommandError("--batch must be at least 1")
        if dry_run:
            count = store.count_purgeable(older_than=age, statuses=statuses)
            self.stdout.write(f"would delete tasks={count}")
            return
        store.ensure_history_partitions()
        dropped = store.Dropped([], 0)
        if set(statuses) == set(TERMINAL):  # a day can go whole only when every status goes
            dropped = store.drop_history_partitions(older_than=age)
        deleted = 0
        while done := store.purge_finished(older_than=age, statuses=statuses, batch=batch):
            deleted += done
        keys = store.purge_idempotency_keys(older_than=age)
        workers = store.purge_workers(older_than=age)
        self.stdout.write(
            f"dropped partitions={len(dropped.partitions)} (about {dropped.estimated_rows} tasks) "
            f"deleted tasks={deleted} idempotency_keys={keys} workers={workers}"
        )
