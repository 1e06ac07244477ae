"""Background services: a class with run_once(), looped by a thread until stopped.

Tests call run_once() directly. If run_once() raises, the thread reports the failure so the worker
stops instead of running on unseen (a worker without heartbeat or listener is not trustworthy).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from django.db import connection

logger = logging.getLogger(__name__)


class Service(Protocol):
    name: str

    def run_once(self) -> object: ...


class ServiceThread(threading.Thread):
    """Runs service.run_once() every interval seconds (or as many as interval() says then) until stop
    is set."""

    def __init__(
        self,
        service: Service,
        *,
        interval: float | Callable[[], float],
        stop: threading.Event,
        on_crash: Callable[[str], None],
        on_start: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name=f"taskqueue-{service.name}", daemon=True)
        self.service = service
        self.interval = interval
        self.stop = stop
        self.on_crash = on_crash
        self.on_start = on_start
        """Called first in the thread (db.sends_heartbeats: before its connection opens)."""

    def run(self) -> None:
        try:
            if self.on_start is not None:
                self.on_start()
            while not self.stop.is_set():
                self.service.run_once()
                interval = self.interval() if callable(self.interval) else self.interval
                self.stop.wait(next_run(self.service, interval) - time.monotonic())
        except Exception:
            logger.exception("service_crashed service=%s", self.service.name)
            self.on_crash(self.service.name)
        finally:
            connection.close()


def next_run(service: Service, interval: float) -> float:
    """time.monotonic() when service, just run, runs again: after interval, or later if it has
    nothing to do before (paused_until(): workers.housekeeper.Housekept, while another process
    holds the housekeeping)."""
    paused_until: Callable[[], float] | None = getattr(service, "paused_until", None)
    return max(time.monotonic() + interval, paused_until() if paused_until is not None else 0.0)


SLACK = 0.5
"""Seconds early a Rotation runs a service when it runs another anyway: an idle supervisor wakes once
for several of them (a wake-up costs this machine 0.1-0.3 ms of CPU: docs/benchmarks.md)."""


class Rotation:
    """Services run in turn by one loop that has other work (a supervisor's), each at its interval:
    one thread, so one database connection, for all of them."""

    def __init__(self, services: list[tuple[Service, float]], *, slack: float = SLACK) -> None:
        self.services = services
        self.slack = slack
        self.due = [time.monotonic()] * len(services)

    def hurry(self, service: Service) -> None:
        """Run service on the next pass, whatever its interval says."""
        for index, (each, _) in enumerate(self.services):
            if each is service:
                self.due[index] = 0.0

    def run_due(self) -> float:
        """Run the services that are due, or will be within slack seconds; seconds until the next
        one is."""
        for index, (service, interval) in enumerate(self.services):
            if time.monotonic() + self.slack >= self.due[index]:
                service.run_once()
                self.due[index] = next_run(service, interval)
        return max(min(self.due) - time.monotonic(), 0.0)
