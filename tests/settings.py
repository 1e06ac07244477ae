"""Test settings: the service's settings plus the test task modules."""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key")

from taskqueue_project.settings import *  # noqa: E402,F403
from taskqueue_project.settings import TASKQUEUE, TASKS  # noqa: E402

TASKS["default"]["QUEUES"] = ["default", "emails", "reports"]
TASKQUEUE["IMPORTS"] = [*TASKQUEUE["IMPORTS"], "tests.tasks"]
