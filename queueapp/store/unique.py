"""Unique tasks: enqueue a task with a key unless a live task (or one that finished less than
unique_for seconds ago) holds it; then the holder is the answer. The unique index on live tasks
decides races; see docs/scheduling.md, "Unique tasks"."""

from __future__ import annotations

from typing import Any

from django.db.backends.utils import CursorWrapper

from queueapp import exceptions
from queueapp.sql import QUERIES
from queueapp.store.rows import Inserted, NewTask

# A holder that finishes (and so frees the key) between our insert and our look-up sends us round
# again; failing every time means the key is taken and freed as fast as we look: said, not looped on.
_ATTEMPTS = 5


def insert_unique(cursor: CursorWrapper, params: dict[str, Any], new: NewTask) -> Inserted:
    """Insert new (params: enqueue_task's), or find the task holding its key (created=False)."""
    key = {"unique_key": new.unique_key, "unique_for": new.unique_for}
    for _ in range(_ATTEMPTS):
        cursor.execute(QUERIES["enqueue_unique_task"], {**params, **key})
        row = cursor.fetchone()
        if row is not None:
            return _settled(cursor, Inserted(row[0], row[1], row[2]), key)
        cursor.execute(QUERIES["unique_key_holder"], key)
        holder = cursor.fetchone()
        if holder is not None:
            return Inserted(holder[0], holder[1], holder[2], created=False)
    raise exceptions.UniqueKeyContended(
        f"unique key {new.unique_key!r} was taken and freed {_ATTEMPTS} times while enqueueing; try again"
    )


def _settled(cursor: CursorWrapper, inserted: Inserted, key: dict[str, Any]) -> Inserted:
    # READ COMMITTED: the insert's snapshot may predate the commit of the key's previous task
    # moving to history (the insert waited on the index for that very commit, then went ahead).
    # Seen now, in a new statement, that task still holds the key for unique_for seconds: our row,
    # which nobody else has seen, is withdrawn.
    if key["unique_for"] <= 0:
        return inserted
    cursor.execute(QUERIES["finished_unique_holder"], key)
    holder = cursor.fetchone()
    if holder is None:
        return inserted
    cursor.execute(QUERIES["withdraw_task"], {"id": inserted.id})
    return Inserted(holder[0], holder[1], holder[2], created=False)
