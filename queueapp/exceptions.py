"""The queue's own errors. Each docstring is its default message."""

from __future__ import annotations

from django.tasks.exceptions import InvalidTask


class TaskQueueError(Exception):
    """Task queue error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class UnknownTaskPath(TaskQueueError, InvalidTask):
    """The task path is not a registered task in this process."""


class ArgumentsTooLarge(TaskQueueError, InvalidTask):
    """The task's arguments are larger than TASKQUEUE["MAX_ARGS_BYTES"]."""


class ArgumentsNotJSON(TaskQueueError, InvalidTask):
    """The task's arguments cannot be stored as JSON."""


class ArgumentsDoNotMatch(TaskQueueError, InvalidTask):
    """The arguments do not fit the task function's signature."""


class ReturnValueNotJSON(TaskQueueError):
    """The task returned a value that cannot be stored as JSON."""


class ReturnValueTooLarge(TaskQueueError):
    """The task returned a value larger than TASKQUEUE["MAX_RETURN_BYTES"] as JSON."""


class ArgumentsMalformed(TaskQueueError):
    """The stored args are not a JSON array or the kwargs not a JSON object."""


class WorkerLost(TaskQueueError):
    """The worker running the task stopped beating (or its process died) during the attempt."""


class WorkerInterrupted(TaskQueueError):
    """The worker was stopped (second signal or grace period over) while the task ran."""


class TaskTimeout(TaskQueueError):
    """The attempt ran past the task's timeout and its process was killed."""


class UniqueKeyContended(TaskQueueError):
    """The unique key was taken and freed again on every attempt to enqueue it; try again."""
