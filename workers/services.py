"""Background services: a class with run_once(), looped by a thread until stopped.

Tests call run_once() directly. If run_once() raises, the thread reports the failure so the worker
stops instead of running on unseen (a worker without heartbeat or listener is not trustworthy).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from django.db import connection

logger = logging.getLogger(__name__)


class Service(Protocol):
    name: str

    def run_once(self) -> object: ...


class ServiceThread(threading.Thread):
    """Runs service.run_once() every interval seconds until stop is set."""

    def __init__(
        self, service: Service, *, interval: float, stop: threading.Event, on_crash: Callable[[str], None]
    ) -> None:
        super().__init__(name=f"taskqueue-{service.name}", daemon=True)
        self.service = service
        self.interval = interval
        self.stop = stop
        self.on_crash = on_crash

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.service.run_once()
                self.stop.wait(self.interval)
        except Exception:
            logger.exception("service_crashed service=%s", self.service.name)
            self.on_crash(self.service.name)
        finally:
            connection.close()
