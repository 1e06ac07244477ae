"""Worker settings: command-line options over settings.TASKQUEUE over defaults, checked once."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID, uuid4

from django.conf import settings
from django.tasks import task_backends

from queueapp.backend import PostgresBackend


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    queues: tuple[str, ...]
    concurrency: int = 4
    """Tasks run at once by one process (threads)."""
    processes: int = 1
    """Worker processes under a supervisor that restarts them; 1 runs in this process."""
    burst: bool = False
    """Exit 0 once nothing is ready to run."""
    max_tasks: int | None = None
    """Exit 0 after this many tasks, so a supervisor starts a fresh process."""
    poll_interval: float = 2.0
    """Seconds between polls when no notification comes (jittered); NOTIFY wakes at once."""
    grace: float = 30.0
    """Seconds running tasks get to finish after SIGTERM/SIGINT."""
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0
    reap_interval: float = 15.0
    stage_interval: float = 1.0
    """Seconds between runs of the stager, which makes due SCHEDULED tasks READY: a deferred task
    or a retry starts at most about this long after it is due."""
    backoff_base: float = 2.0
    backoff_max: float = 3600.0
    worker_id: UUID = field(default_factory=uuid4)
    metrics_port: int | None = None
    """Serve this process's (or, under --processes, all children's) Prometheus metrics on this port."""
    parent_pid: int | None = None
    """Set for a supervisor's child: the child stops if its supervisor goes away."""

    @classmethod
    def from_settings(cls, **options: object) -> WorkerConfig:
        """Build and validate; raises ValueError with a message that names the bad option."""
        conf = settings.TASKQUEUE
        backend = task_backends["default"]
        if not isinstance(backend, PostgresBackend):
            raise ValueError("TASKS['default'] must use queueapp.backend.PostgresBackend")
        stale_after = float(conf.get("STALE_AFTER", 30.0))
        values: dict[str, object] = {
            "queues": tuple(sorted(backend.queues)),
            "heartbeat_interval": float(conf.get("HEARTBEAT_INTERVAL", 5.0)),
            "stale_after": stale_after,
            "reap_interval": float(conf.get("REAP_INTERVAL", stale_after / 2)),
            "stage_interval": float(conf.get("STAGE_INTERVAL", 1.0)),
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
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ValueError(f"--max-tasks must be at least 1, not {self.max_tasks}")
        if not self.stage_interval > 0:
            raise ValueError(
                f"TASKQUEUE STAGE_INTERVAL must be more than 0 seconds, not {self.stage_interval}"
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
