"""How a worker process ends: the exit codes operators see (docs/operations.md, "Signals and exit codes")."""

from __future__ import annotations

import enum
import signal


class ExitCode(enum.IntEnum):
    OK = 0
    """Stopped as asked (a signal, --burst, --max-tasks) with everything recorded."""
    INTERRUPTED = 1
    """Stopped hard (a second signal, or --grace ran out): running tasks were taken back."""
    LOST = 2
    """Found itself marked LOST by a reaper (paused or cut off past STALE_AFTER)."""
    SERVICE_DIED = 3
    """Its heartbeat, listener, reaper or stager thread died."""
    LEASE_EXPIRED = 4
    """No heartbeat reached the database within STALE_AFTER (a network partition, a hung socket):
    it stopped its tasks and left without another word to the database."""
    CRASHED = 70
    """A forked child whose worker raised (a bug)."""

    @classmethod
    def describe(cls, code: int) -> str:
        """A name for any process exit code: ours, killed_by_SIGKILL, or the number."""
        if code < 0:
            known = -code in signal.Signals._value2member_map_
            return f"killed_by_{signal.Signals(-code).name if known else -code}"
        return cls(code).name.lower() if code in cls._value2member_map_ else str(code)
