"""Run worker processes: `manage.py runworker --queues default,emails --concurrency 8`."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queueapp import checks
from workers.config import WorkerConfig
from workers.supervisor import Supervisor
from workers.worker import Worker


class Command(BaseCommand):
    help = "Claim and run tasks. SIGTERM/SIGINT stop gracefully; a second signal stops at once."
    requires_system_checks = checks.WORKER_TAGS

    def add_arguments(self, parser: CommandParser) -> None:
        # The options are WorkerConfig's fields (workers/config.py): add one there, not here.
        WorkerConfig.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = WorkerConfig.from_options(options)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        code = Supervisor(config).run() if config.processes > 1 else Worker(config).run()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # Threads of tasks abandoned by a hard stop must not keep the process alive.
        os._exit(code)
