"""`manage.py queues list|pause|resume|seed`: flow control from the shell (docs/flow-control.md)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueapp import conf, store


class Command(BaseCommand):
    help = "List queues with their flow control and figures; pause or resume queues; seed settings."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("list", help="Queues, their limits, and READY/RUNNING counts.")
        for verb in ("pause", "resume"):
            sub = actions.add_parser(verb, help=f"{verb.capitalize()} queues (seen within 1 s).")
            sub.add_argument("queues", nargs="+", metavar="QUEUE")
        actions.add_parser("seed", help='Create missing queue settings from TASKQUEUE["FLOW_CONTROL"].')

    def handle(self, *args: Any, action: str, queues: list[str] | None = None, **options: Any) -> None:
        if action == "list":
            self.list_queues()
        elif action == "seed":
            try:
                made = store.seed_queue_settings(conf.get().flow_control)
            except ValidationError as exc:
                raise CommandError(f"nothing seeded: {'; '.join(exc.messages)}") from exc
            self.stdout.write(f"seeded {len(made)} queue(s): {', '.join(made) or '-'}")
        else:
            for name in queues or ():
                if not name or len(name) > 100:
                    raise CommandError(f"a queue name has 1 to 100 characters, not {name!r}")
            for name in queues or ():
                store.set_paused(name, action == "pause")
                self.stdout.write(f"{action}d {name}")

    def list_queues(self) -> None:
        self.stdout.write(
            f"{'queue':20} {'paused':6} {'limit':>5} {'per key':>7} {'rate':>10} "
            f"{'ready':>7} {'deferred':>8} {'running':>7} {'started/min':>11} {'oldest':>8}"
        )
        for q in store.queue_flow():
            rate = f"{q.rate_limit}/{q.rate_period:g}s" if q.rate_limit else "-"
            oldest = f"{q.oldest_ready_seconds:.1f}s" if q.oldest_ready_seconds is not None else "-"
            self.stdout.write(
                f"{q.name:20} {'yes' if q.paused else 'no':6} {q.concurrency_limit or '-':>5} "
                f"{q.key_concurrency:>7} {rate:>10} {q.ready:>7} {q.scheduled:>8} {q.running:>7} "
                f"{q.started_last_minute:>11} {oldest:>8}"
            )
