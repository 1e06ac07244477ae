"""Idempotency-Keys of the REST API, and their retention."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connections

from queueapp.sql import QUERIES


def claim_idempotency_key(
    *, api_key_id: int, key: str, request_hash: str, using: str = "default"
) -> int | None:
    """Take key for this request (returns the row id), or None when an earlier request holds it."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["claim_idempotency_key"],
            {"api_key_id": api_key_id, "key": key, "request_hash": request_hash},
        )
        row = cursor.fetchone()
    return row[0] if row else None


def get_idempotency_key(*, api_key_id: int, key: str, using: str = "default") -> tuple[str, list[int]] | None:
    """(request_hash, task_ids) recorded for key."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["get_idempotency_key"], {"api_key_id": api_key_id, "key": key})
        row = cursor.fetchone()
    return (row[0], list(row[1])) if row else None


def set_idempotency_tasks(idempotency_id: int, task_ids: Sequence[int], *, using: str = "default") -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["set_idempotency_tasks"], {"id": idempotency_id, "task_ids": list(task_ids)})


def purge_idempotency_keys(*, older_than: float, using: str = "default") -> int:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["purge_idempotency_keys"], {"older_than": older_than})
        return int(cursor.rowcount)
