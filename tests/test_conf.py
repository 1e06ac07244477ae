"""TASKQUEUE is read through one typed object (queueapp.conf), which follows the settings."""

from __future__ import annotations

from typing import Any

from django.core import checks

from queueapp import conf


def test_settings_are_read_through_one_typed_object_that_follows_changes(settings: Any) -> None:
    assert conf.get().stale_after == settings.TASKQUEUE["STALE_AFTER"]
    settings.TASKQUEUE = {**settings.TASKQUEUE, "STALE_AFTER": 7.5, "QUEUE_LIMITS": {"emails": 3}}
    assert conf.get().stale_after == 7.5
    assert conf.get().queue_limits == {"emails": 3}
    settings.TASKQUEUE = {}
    assert conf.get() == conf.QueueSettings()  # every key has a default


def test_an_unknown_key_is_a_warning_that_names_it(settings: Any) -> None:
    settings.TASKQUEUE = {**settings.TASKQUEUE, "STALE_AFTR": 10}
    found = [message for message in checks.run_checks() if "STALE_AFTR" in message.msg]
    assert [(message.id, message.level) for message in found] == [("queueapp.W001", checks.WARNING)]
