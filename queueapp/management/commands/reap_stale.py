"""Reap lost workers from cron: `manage.py reap_stale` (safe every minute, next to workers)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.tasks import task_backends

from queueapp import conf, store
from queueapp.backend import PostgresBackend


class Command(BaseCommand):
    help = "Mark workers without a recent heartbeat LOST and requeue (or fail) their running tasks."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stale-after",
            type=float,
            help="Seconds without a heartbeat before a worker is lost (default: TASKQUEUE STALE_AFTER).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Say what would be done; change nothing.")

    def handle(self, *args: Any, stale_after: float | None, dry_run: bool, **options: Any) -> None:
        stale_after = conf.get().stale_after if stale_after is None else stale_after
        heartbeat = conf.get().heartbeat_interval
        if not stale_after >= 2 * heartbeat:
            raise CommandError(
                f"--stale-after {stale_after:g} is too short: workers beat every {heartbeat:g} s "
                f"(TASKQUEUE_HEARTBEAT_INTERVAL), so a live worker can go {heartbeat:g} s between beats "
                f"and would be marked LOST; give at least two intervals ({2 * heartbeat:g} s)"
            )
        if dry_run:
            outcome = store.preview_reap(stale_after=stale_after)
            verb = "would mark"
        else:
            backend = task_backends["default"]
            assert isinstance(backend, PostgresBackend)
            outcome = store.reap_workers(
                stale_after=stale_after, backoff_base=backend.backoff_base, backoff_max=backend.backoff_max
            )
            verb = "marked"
            store.ensure_history_partitions()
            if not outcome.ran:
                self.stdout.write("another reaper is running; nothing done")
                return
        self.stdout.write(
            f"{verb} workers_lost={outcome.workers_lost} tasks_requeued={outcome.tasks_requeued} "
            f"tasks_failed={outcome.tasks_failed}"
        )
