"""Test settings: the service's settings plus the test task modules."""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key")

from taskqueue_project.settings import *  # noqa: F403
from taskqueue_project.settings import TASKQUEUE, TASKS

TASKS["default"]["QUEUES"] = ["default", "emails", "reports"]
TASKQUEUE["IMPORTS"] = [*TASKQUEUE["IMPORTS"], "tests.tasks"]
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
