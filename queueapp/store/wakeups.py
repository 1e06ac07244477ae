"""What an enqueue's notification says: the queue, and which waiting worker should claim (migration
0013: queueapp_wake_waiters names one per task, at random among those waiting), and where it goes:
to the channel of the named worker's listener (migration 0015), not to every listener."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

from queueapp.sql import QUERIES
from queueapp.store.rows import NOTIFY_CHANNEL


@dataclass(frozen=True, slots=True)
class Wake:
    queue: str
    named: UUID | None
    """The worker that should claim; None: every listener of the queue (a resumed queue, say)."""

    def for_worker(self, worker_id: UUID) -> bool:
        return self.named is None or self.named == worker_id


def wake_channel(listener: UUID) -> str:
    """The channel of one listener (a supervisor's, or a lone worker's own), for the wake-ups that
    name a worker it hears for: "taskqueue_<32 hex digits>", a plain identifier for LISTEN."""
    return f"{NOTIFY_CHANNEL}_{listener.hex}"


def parse_wake(payload: str) -> Wake:
    """'<queue> <worker id>' or '<queue>' (queue names may hold spaces: the id is the last word)."""
    queue, _, last = payload.rpartition(" ")
    if queue:
        try:
            return Wake(queue, UUID(last))
        except ValueError:  # no id at the end: the whole payload is a queue's name, with a space
            pass
    return Wake(payload, None)


def name_listener(conn: psycopg.Connection[Any]) -> None:
    """A supervisor's Django connection that now LISTENs: named as a listener's own connection is."""
    conn.execute(QUERIES["name_listener"])


def check_listener(conn: psycopg.Connection[Any]) -> None:
    """A round trip on an idle LISTEN connection: a dead one raises here, not at the next wake-up."""
    conn.execute(QUERIES["check_connection"])
