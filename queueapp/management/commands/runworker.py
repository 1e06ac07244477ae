"""Run worker processes: `manage.py runworker --queues default,emails --concurrency 8`."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any
from uuid import UUID

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.config import WorkerConfig
from workers.supervisor import Supervisor
from workers.worker import Worker


def _queues(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


class Command(BaseCommand):
    help = "Claim and run tasks. SIGTERM/SIGINT stop gracefully; a second signal stops at once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues", type=_queues, help="Comma-separated queues (default: all the backend's)."
        )
        parser.add_argument(
            "--concurrency", type=int, help="Tasks run at once per process (threads; default 4)."
        )
        parser.add_argument("--processes", type=int, help="Worker processes under a supervisor (default 1).")
        parser.add_argument(
            "--burst", action="store_true", default=None, help="Exit 0 when nothing is ready."
        )
        parser.add_argument("--max-tasks", type=int, help="Exit 0 after N tasks (a supervisor restarts it).")
        parser.add_argument(
            "--poll-interval", type=float, help="Seconds between polls (default 2; jittered)."
        )
        parser.add_argument(
            "--grace", type=float, help="Seconds to finish running tasks on SIGTERM (default 30)."
        )
        parser.add_argument(
            "--metrics-port", type=int, help="Serve Prometheus metrics on this port (all processes together)."
        )
        parser.add_argument("--worker-id", type=UUID, help="Set by the supervisor for its children.")
        parser.add_argument("--parent-pid", type=int, help="Set by the supervisor for its children.")

    def handle(self, *args: Any, **options: Any) -> None:
        names = (
            "queues",
            "concurrency",
            "processes",
            "burst",
            "max_tasks",
            "poll_interval",
            "grace",
            "metrics_port",
            "worker_id",
        )
        try:
            config = WorkerConfig.from_settings(**{name: options[name] for name in names})
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if config.processes > 1:
            code = Supervisor(config, self.child_args(options)).run()
        else:
            code = Worker(config).run()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # Threads of tasks abandoned by a hard stop must not keep the process alive.
        os._exit(code)

    @staticmethod
    def child_args(options: dict[str, Any]) -> list[str]:
        args = []
        for name in ("queues", "concurrency", "max_tasks", "poll_interval", "grace"):
            value = options[name]
            if value is not None:
                args += [f"--{name.replace('_', '-')}", ",".join(value) if name == "queues" else str(value)]
        if options["burst"]:
            args.append("--burst")
        return args
