"""Worker settings: command-line options over TASKQUEUE (queueapp.conf) over defaults, checked once.

The fields are the one list of runworker's options: a field with `option(...)` metadata is a flag
(`max_tasks` is `--max-tasks`), parsed by `add_arguments`, read by `from_options` and passed on to
a supervisor's children by `child_args`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

from django.tasks import task_backends

from queueapp import conf
from queueapp.backend import PostgresBackend

_OPTION = "runworker_option"

PREFETCH_PER_THREAD = 32
PREFETCH_MOST = 256
"""Tasks claimed ahead by default: 32 a thread, at most 256 (docs/benchmarks.md, ninth session). At
the default 8 threads a cap of 64 (8 a thread) drained no-ops 15-26% slower than 256; with 32
threads, 1,024 drained slower than 256. A worker that dies costs each task it holds an attempt, so
the cap is no higher than the drain needs."""


@dataclass(frozen=True)
class Option:
    """How a WorkerConfig field appears on runworker's command line."""

    help: str
    parse: Callable[[str], object] | None
    """Turns the argument into the field's value; None makes an on/off flag."""
    show: Callable[[Any], str]
    """Turns the value back into an argument, for a supervisor's children."""
    inherited: bool
    """A supervisor passes it on to each child; otherwise the supervisor keeps it or sets it per child."""


def option(
    help: str,
    *,
    parse: Callable[[str], object] | None = None,
    show: Callable[[Any], str] = str,
    inherited: bool = True,
) -> dict[str, Option]:
    """Field metadata that makes the field a runworker option."""
    return {_OPTION: Option(help, parse, show, inherited)}


def parse_queues(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    queues: tuple[str, ...] = field(
        metadata=option(
            "Comma-separated queues (default: all the backend's).", parse=parse_queues, show=",".join
        )
    )
    concurrency: int = field(
        default=8, metadata=option("Tasks run at once per process (threads).", parse=int)
    )
    prefetch: int | None = field(
        default=None,
        metadata=option(
            "Most tasks a process claims ahead of its free threads: as many as its threads run in 0.1 s"
            " on average (none for tasks that run longer), so a thread never waits for a round and a"
            " claimed task waits about 0.1 s at worst; 0 turns it off."
            f" Default: {PREFETCH_PER_THREAD} x --concurrency, at most {PREFETCH_MOST}.",
            parse=int,
        ),
    )
    processes: int = field(
        default=1,
        metadata=option(
            "Worker processes under a supervisor that restarts them; 1 runs in this process.",
            parse=int,
            inherited=False,
        ),
    )
    burst: bool = field(default=False, metadata=option("Exit 0 once nothing is ready to run."))
    max_tasks: int | None = field(
        default=None,
        metadata=option("Exit 0 after N tasks (a supervisor starts a fresh process).", parse=int),
    )
    poll_interval: float = field(
        default=2.0,
        metadata=option("Seconds between polls when no NOTIFY comes (jittered).", parse=float),
    )
    grace: float = field(
        default=30.0,
        metadata=option("Seconds running tasks get to finish after SIGTERM/SIGINT.", parse=float),
    )
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0
    reap_interval: float = 15.0
    stage_interval: float = 1.0
    """Seconds between runs of the stager, which makes due SCHEDULED tasks READY: a deferred task
    or a retry starts at most about this long after it is due."""
    schedule_interval: float = 1.0
    """Seconds between passes of the scheduler, which enqueues the due ticks of schedules."""
    schedule_grace: float = 10.0
    """A tick enqueued later than this many seconds is missed: its schedule's catch_up decides."""
    backoff_base: float = 2.0
    backoff_max: float = 3600.0
    worker_id: UUID = field(
        default_factory=uuid4,
        metadata=option("Set by the supervisor for each child.", parse=UUID, inherited=False),
    )
    metrics_port: int | None = field(
        default=None,
        metadata=option(
            "Serve Prometheus metrics on this port (under --processes, all children's together).",
            parse=int,
            inherited=False,
        ),
    )
    parent_pid: int | None = field(
        default=None,
        metadata=option(
            "Set by the supervisor for each child: the child stops if its supervisor goes away.",
            parse=int,
            inherited=False,
        ),
    )
    listened_by: UUID | None = None
    """A forked child's: the supervisor whose listener hears its wake-ups (their channel:
    store.wake_channel). Set by the supervisor, never an option."""

    @property
    def prefetch_max(self) -> int:
        """At most this many tasks are claimed ahead of free threads."""
        if self.prefetch is None:
            return min(PREFETCH_PER_THREAD * self.concurrency, PREFETCH_MOST)
        return self.prefetch

    @classmethod
    def options(cls) -> Iterator[tuple[str, Option]]:
        """(field name, Option) for each field that is a runworker option, in declaration order."""
        for f in dataclasses.fields(cls):
            if _OPTION in f.metadata:
                yield f.name, f.metadata[_OPTION]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per option field; unset flags are None, so settings and defaults apply."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, opt in cls.options():
            default = defaults[name]
            shown = "" if default in (dataclasses.MISSING, None, False) else f" Default: {default}."
            if opt.parse is None:
                parser.add_argument(flag(name), action="store_true", default=None, help=opt.help + shown)
            else:
                parser.add_argument(flag(name), type=opt.parse, help=opt.help + shown)

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> WorkerConfig:
        """From parsed command-line options (runworker's), over settings and defaults."""
        return cls.from_settings(**{name: options.get(name) for name, _ in cls.options()})

    def child_args(self, **per_child: object) -> list[str]:
        """runworker's arguments for a supervisor's child: this config's inherited options, then
        per_child (worker_id, parent_pid)."""
        values: dict[str, object] = {
            name: getattr(self, name) for name, opt in self.options() if opt.inherited
        }
        options = dict(self.options())
        unknown = sorted(set(per_child) - set(options))
        if unknown:
            raise TypeError(f"not runworker options: {', '.join(unknown)}")
        values.update(per_child)
        args: list[str] = []
        for name, value in values.items():
            opt = options[name]
            if value is None or value is False:
                continue
            args += [flag(name)] if opt.parse is None else [flag(name), opt.show(value)]
        return args

    @classmethod
    def from_settings(cls, **options: object) -> WorkerConfig:
        """Build and validate; raises ValueError with a message that names the bad option."""
        given = conf.get()
        backend = task_backends["default"]
        if not isinstance(backend, PostgresBackend):
            raise ValueError("TASKS['default'] must use queueapp.backend.PostgresBackend")
        values: dict[str, object] = {
            "queues": tuple(sorted(backend.queues)),
            "heartbeat_interval": float(given.heartbeat_interval),
            "stale_after": float(given.stale_after),
            "reap_interval": float(
                given.stale_after / 2 if given.reap_interval is None else given.reap_interval
            ),
            "stage_interval": float(given.stage_interval),
            "schedule_interval": float(given.schedule_interval),
            "schedule_grace": float(given.schedule_grace),
            "backoff_base": backend.backoff_base,
            "backoff_max": backend.backoff_max,
        }
        values.update({name: value for name, value in options.items() if value is not None})
        config = cls(**values)  # type: ignore[arg-type]
        config.check(known_queues=backend.queues)
        return config

    def check(self, *, known_queues: set[str]) -> None:
        if not self.queues:
            raise ValueError("--queues needs at least one queue name")
        unknown = sorted(set(self.queues) - known_queues)
        if unknown:
            known = ", ".join(sorted(known_queues))
            raise ValueError(f"unknown queue(s) {', '.join(unknown)}: the backend's QUEUES are {known}")
        for name in ("concurrency", "processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, not {getattr(self, name)}")
        if self.prefetch is not None and self.prefetch < 0:
            raise ValueError(f"--prefetch must be 0 or more, not {self.prefetch}")
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ValueError(f"--max-tasks must be at least 1, not {self.max_tasks}")
        if not self.stage_interval > 0:
            raise ValueError(
                f"TASKQUEUE STAGE_INTERVAL must be more than 0 seconds, not {self.stage_interval}"
            )
        if not 0 < self.schedule_interval < self.schedule_grace:
            raise ValueError(
                f"TASKQUEUE SCHEDULE_INTERVAL ({self.schedule_interval}) must be above 0 and below "
                f"SCHEDULE_GRACE ({self.schedule_grace})"
            )
        if not self.poll_interval > 0:
            raise ValueError(f"--poll-interval must be more than 0 seconds, not {self.poll_interval}")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ValueError(f"--metrics-port must be a TCP port (1-65535), not {self.metrics_port}")
        if not self.grace >= 0:
            raise ValueError(f"--grace must be 0 or more seconds, not {self.grace}")
        if not 0 < self.heartbeat_interval < self.stale_after:
            raise ValueError(
                f"TASKQUEUE HEARTBEAT_INTERVAL ({self.heartbeat_interval}) must be above 0 and below "
                f"STALE_AFTER ({self.stale_after})"
            )


def flag(name: str) -> str:
    """The command-line flag of an option field: max_tasks is --max-tasks."""
    return "--" + name.replace("_", "-")
