"""Lease: how long a worker may go on taking itself for alive, by its own monotonic clock.

The reaper writes a worker off once its heartbeat is older than STALE_AFTER. A worker cut off from
the database (a dropped route, a NAT timeout) never hears that verdict, and a socket that stops
answering without being closed can hold any of its threads for as long as the network is gone. So
the verdict is reached on both sides: each heartbeat that reaches the database renews a lease that
runs STALE_AFTER from the moment the beat was sent (the row's time is later, so the lease ends
before any reaper can act on it), and a worker whose lease runs out stops as if it had been reaped.
The lease thread never touches the database, so a hung socket cannot hold it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Lease:
    name = "lease"

    def __init__(self, *, duration: float, on_expired: Callable[[], None]) -> None:
        self.duration = duration
        self.on_expired = on_expired
        self.lock = threading.Lock()
        self.renewed_at = time.monotonic()
        """When the last beat that reached the database was sent (monotonic seconds)."""
        self.expired = False
        """Once set, for good: a renewal that arrives afterwards comes too late to count."""

    def renew(self, sent_at: float) -> None:
        """A beat sent at sent_at (time.monotonic()) was written: the lease runs from then."""
        with self.lock:
            if not self.expired:
                self.renewed_at = max(self.renewed_at, sent_at)

    def next_check_in(self) -> float:
        """Seconds until the lease runs out as it stands: the lease thread looks again then, not on a
        timer (a renewal meanwhile only moves the end later: it waits again). Run out: the duration."""
        with self.lock:
            if self.expired:
                return self.duration
            return max(self.renewed_at + self.duration - time.monotonic(), 0.01)

    def run_once(self) -> bool:
        """True while the lease holds; when it has run out, on_expired is called (once) and False."""
        with self.lock:
            if self.expired:
                return False
            late = time.monotonic() - self.renewed_at
            if late < self.duration:
                return True
            self.expired = True
        logger.error(
            "lease_expired last_beat_ago=%.1fs stale_after=%ss: no heartbeat reached the database in "
            "time; this worker must take itself for reaped",
            late,
            self.duration,
        )
        self.on_expired()
        return False
