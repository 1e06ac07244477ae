"""Arguments checked against the task function's signature when a task is enqueued, so that a call
that can never run is refused at once instead of failing every attempt with TypeError."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from queueapp import exceptions


@functools.cache
def _signature(func: Callable[..., Any], takes_context: bool) -> inspect.Signature:
    parameters = list(inspect.signature(func).parameters.values())
    if takes_context:  # the worker passes the context first; callers never do
        parameters = parameters[1:]
    # Binding needs names and kinds only; without annotations the message reads `add(a, b)`.
    return inspect.Signature([p.replace(annotation=inspect.Parameter.empty) for p in parameters])


def check_arguments(task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise ArgumentsDoNotMatch, naming the mismatch, when task's function cannot take args and
    kwargs."""
    signature = _signature(task.func, bool(task.takes_context))
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise exceptions.ArgumentsDoNotMatch(
            f"{task.name}{signature} cannot be called with these arguments: {exc}"
        ) from exc
