"""Create an API key and print it once: `manage.py create_api_key billing --tasks 'invoice-*'`."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueapp import apikeys, http_tasks


class Command(BaseCommand):
    help = "Create an API key. The key is printed once; only its hash is stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who or what the key is for.")
        parser.add_argument(
            "--tasks",
            nargs="+",
            default=[],
            metavar="PATTERN",
            help="HTTP task names (shell patterns like 'email-*') the key may submit; default: all.",
        )

    def handle(self, *args: Any, name: str, tasks: list[str], **options: Any) -> None:
        try:
            row, key = apikeys.create_api_key(name, task_patterns=tasks)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        unmatched = [p for p in tasks if not any(http_tasks.allowed(n, [p]) for n in http_tasks.names())]
        for pattern in unmatched:
            self.stderr.write(f"warning: --tasks {pattern!r} matches no task exposed for HTTP right now")
        self.stdout.write(key)
        self.stderr.write(f"created API key {row.name!r} (prefix {row.prefix}); it will not be shown again")
