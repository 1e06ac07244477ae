"""Task rows as Python sees them, and the JSON the queue stores (checked before any INSERT)."""

from __future__ import annotations

import json
from _json import encode_basestring, make_encoder
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from django.utils.json import normalize_json

from queueapp import conf, exceptions

NOTIFY_CHANNEL = "taskqueue"


@dataclass(slots=True, kw_only=True)
class NewTask:
    """A task about to be inserted: its arguments as given, and as the JSON text to store."""

    task_path: str
    queue_name: str
    priority: int
    args: Sequence[Any]
    kwargs: dict[str, Any]
    args_json: str
    kwargs_json: str
    run_after: datetime | None
    max_attempts: int
    timeout: float | None = None
    concurrency_key: str | None = None
    """Tasks of a queue with the same key run at most its key_concurrency at a time."""
    unique_key: str | None = None
    """No other live task may have this key: enqueueing it again returns the holder instead."""
    unique_for: float = 0.0
    """Seconds the key stays held after its task finished."""


class TaskRow(NamedTuple):
    """A task as the queue stores it: immutable, and made for every task a worker claims. A frozen
    dataclass sets each field through object.__setattr__: 5.2 us a row against 1.1 us."""

    id: int
    task_path: str
    queue_name: str
    priority: int
    status: str
    args: list[Any]
    kwargs: dict[str, Any]
    run_after: datetime
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_attempts: int
    worker_id: UUID | None
    worker_ids: list[UUID]
    errors: list[dict[str, Any]]
    return_value: Any
    cancel_requested: bool
    timeout: float | None
    unique_key: str | None = None


_JSON_COLUMNS = ("args", "kwargs", "errors", "return_value")


@dataclass(slots=True)
class Inserted:
    """What the database chose for a task it has just inserted (a NamedTuple costs more to make)."""

    id: int
    run_after: datetime
    enqueued_at: datetime
    created: bool = True
    """False when a unique task's key was held: id is then the holder's (run_after and enqueued_at
    are not read back)."""


def task_row(columns: Sequence[str], values: Sequence[Any]) -> TaskRow:
    """A TaskRow from one row of a statement whose columns are named as TaskRow's fields (all of them:
    a missing or unknown column is a TypeError, never a value in the wrong field)."""
    data = dict(zip(columns, values, strict=True))
    # Django's psycopg setup loads jsonb as text; decode it here, once.
    for column in _JSON_COLUMNS:
        if data[column] is not None:
            data[column] = decode_json(data[column])
    return TaskRow(**data)


def _other_types(value: Any) -> Any:
    # What json.dumps cannot encode itself, django.tasks' normalize_json may (other Mappings and
    # Sequences, UTF-8 bytes); anything else is a TypeError. Plain JSON types never get here, so
    # the common case stays in the C encoder.
    return normalize_json(value)


# json's C encoder (the one JSONEncoder uses), made once: JSONEncoder.encode makes one per call,
# most of the cost of encoding a task's few arguments. It keeps no circular-reference markers (they
# are per-call state): a value that contains itself ends in RecursionError, reported below like any
# other value that is not JSON.
_ENCODE = make_encoder(None, _other_types, encode_basestring, None, ":", ",", False, False, False)


def _to_json(value: Any) -> str:
    """Compact JSON that PostgreSQL's jsonb accepts: no NaN/Infinity, no lone surrogates, no NUL.
    TypeError or ValueError for anything else."""
    try:
        text = "".join(_ENCODE(value, 0))
    except RecursionError:
        raise ValueError("the value contains itself, or is nested too deeply") from None
    if not text.isascii():
        text.encode()  # UnicodeEncodeError for a lone surrogate, which jsonb refuses
    if "\\u0000" in text and _has_nul(value):
        raise ValueError("strings cannot contain the NUL character (\\u0000), which jsonb refuses")
    return text


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def encode_arguments(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[str, str]:
    """Encode args and kwargs as JSON text, or raise a clear InvalidTask."""
    try:
        # No arguments or no keyword arguments is common enough to skip the encoder for.
        args_json = _to_json(list(args)) if args else "[]"
        kwargs_json = _to_json(kwargs) if kwargs else "{}"
    except (TypeError, ValueError) as exc:
        raise exceptions.ArgumentsNotJSON(
            f"task arguments must be JSON (str, int, float, bool, None, list, dict): {exc}"
        ) from exc
    size = _utf8_length(args_json) + _utf8_length(kwargs_json)
    limit = conf.get().max_args_bytes
    if size > limit:
        raise exceptions.ArgumentsTooLarge(
            f"task arguments are {size} bytes of JSON; the limit is {limit} "
            "(TASKQUEUE['MAX_ARGS_BYTES']): pass a reference such as a primary key instead"
        )
    return args_json, kwargs_json


def decode_arguments(args_json: str, kwargs_json: str) -> tuple[list[Any], dict[str, Any]]:
    """Arguments as encode_arguments stored them (as get_result reads them back)."""
    return decode_json(args_json), decode_json(kwargs_json)


def decode_json(text: str) -> Any:
    """JSON text (as the queue stores it, and as jsonb's text comes back) as Python. [] and {}, most
    arguments and errors, are not decoded; the rest goes to json's C scanner itself (json.loads around
    it looks for whitespace before and after in Python, and jsonb's text has none: five times the
    scan of a task's few arguments)."""
    if text == "[]":
        return []
    if text == "{}":
        return {}
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:  # not JSON at 0: json.loads says what is wrong
        end = -1
    return value if end == len(text) else json.loads(text)


# json's C scanner (a decoder makes one; typeshed does not know the attribute).
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def encode_return_value(value: Any) -> str:
    """JSON text of a task's return value; raises ReturnValueNotJSON when it has none and
    ReturnValueTooLarge beyond TASKQUEUE["MAX_RETURN_BYTES"]."""
    try:
        text = _to_json(value)
    except (TypeError, ValueError) as exc:
        raise exceptions.ReturnValueNotJSON(f"task return value is not JSON: {exc}") from exc
    limit = conf.get().max_return_bytes
    size = _utf8_length(text)
    if size > limit:
        raise exceptions.ReturnValueTooLarge(
            f"task return value is {size} bytes of JSON; the limit is {limit} "
            "(TASKQUEUE['MAX_RETURN_BYTES']): store large results elsewhere and return a reference"
        )
    return text


_JSON_TYPES = {list: "an array", dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}


def check_arguments(row: TaskRow) -> None:
    """Raise ArgumentsMalformed unless the row's args are a JSON array and its kwargs an object
    (the database's checks say so; a row written around them must not run with a string's
    characters as its arguments)."""
    if not isinstance(row.args, list) or not isinstance(row.kwargs, dict):
        raise exceptions.ArgumentsMalformed(
            f"task {row.id} has args {_json_type(row.args)} and kwargs {_json_type(row.kwargs)}; "
            "args must be a JSON array and kwargs a JSON object"
        )


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "a number")
