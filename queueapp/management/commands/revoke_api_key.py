"""Revoke API keys by prefix or name: `manage.py revoke_api_key 3f9a1c2b7d4e`."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueapp import apikeys


class Command(BaseCommand):
    help = "Revoke API keys by prefix (the part after tq_) or by name. Requests with them get 401."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix_or_name")

    def handle(self, *args: Any, prefix_or_name: str, **options: Any) -> None:
        revoked = apikeys.revoke_api_key(prefix_or_name)
        if not revoked:
            raise CommandError(f"no live API key has prefix or name {prefix_or_name!r}")
        self.stdout.write(f"revoked {revoked} key(s)")
