"""The console in a real browser (Playwright driving Debian's Chromium): log in, filter failed
tasks, retry one with the action, see it succeed once a worker ran, open the overview.
Screenshots are kept in test-artifacts/browser/."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connections

from queueapp import models
from tests import tasks
from tests.helpers import ROOT, GunicornServer, WorkerProcess, end_task, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts" / "browser"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it as root)"),
]


@contextlib.contextmanager
def closing_connections() -> Iterator[None]:
    """ORM calls made while Playwright's event loop runs get connections of their own (asgiref's
    context-local storage); close them, or the test database cannot be dropped afterwards."""
    try:
        yield
    finally:
        connections.close_all()


@pytest.fixture
def server(tmp_path: Path, transactional_db: None) -> Iterator[GunicornServer]:
    gunicorn = GunicornServer(
        log_dir=tmp_path, env={"DEBUG": "1"}
    )  # DEBUG: static files without collectstatic
    yield gunicorn
    gunicorn.stop()


def test_operator_retries_a_failed_task_from_the_console(server: GunicornServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # the ORM checks below run beside Playwright's loop
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    User.objects.create_superuser("oncall", "oncall@example.com", "correct horse battery staple")
    for i in range(3):
        tasks.add.enqueue(i, i)
    failed = models.Task.objects.order_by("id").first()
    assert failed is not None
    end_task(
        failed.id,
        "FAILED",
        attempts=3,
        max_attempts=3,
        errors=[
            {
                "exception_class_path": "builtins.RuntimeError",
                "message": "<b>boom</b>",
                "attempt": 3,
                "traceback": "Traceback (most recent call last):\n  <script>alert(1)</script>\nRuntimeError",
            }
        ],
    )
    base = f"http://127.0.0.1:{server.port}"

    with sync_playwright() as playwright, closing_connections():
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/admin/login/")
        assert page.request.get(f"{base}/static/admin/css/base.css").ok  # the console is styled
        page.fill("#id_username", "oncall")
        page.fill("#id_password", "correct horse battery staple")
        page.click("input[type=submit]")
        expect(page.locator("#site-name")).to_be_visible()

        page.goto(f"{base}/admin/queueapp/task/")
        page.click("#changelist-filter >> text=Failed")
        expect(page.locator("#result_list tbody tr")).to_have_count(1)
        page.screenshot(path=str(ARTIFACTS / "1-failed-tasks.png"), full_page=True)

        page.goto(f"{base}/admin/queueapp/task/{failed.id}/change/")
        expect(page.locator("text=<script>alert(1)</script>")).to_be_visible()  # escaped, shown as text
        page.screenshot(path=str(ARTIFACTS / "2-task-page.png"), full_page=True)

        page.goto(f"{base}/admin/queueapp/task/?status__exact=FAILED")
        page.check(f"input.action-select[value='{failed.id}']")
        page.select_option("select[name=action]", "retry_tasks")
        page.click("button[name=index]")
        expect(page.locator(".messagelist")).to_contain_text("Retried 1 task(s).")
        page.screenshot(path=str(ARTIFACTS / "3-retried.png"), full_page=True)

        worker = WorkerProcess("--burst", log_dir=tmp_path)
        assert worker.wait(60) == 0, worker.output()
        wait_for(
            lambda: models.Task.objects.get(id=failed.id).status == "SUCCESSFUL",
            timeout=10,
            message="the retried task to succeed",
        )
        page.goto(f"{base}/admin/queueapp/task/{failed.id}/change/")
        expect(page.locator(".field-coloured_status")).to_contain_text("SUCCESSFUL")
        expect(page.locator(".field-attempts_of")).to_contain_text("4/6")
        page.screenshot(path=str(ARTIFACTS / "4-succeeded.png"), full_page=True)

        page.goto(f"{base}/admin/queueapp/task/overview/")
        expect(page.locator("#queues")).to_contain_text("default")
        expect(page.locator("svg[role=img]")).to_have_count(4)
        page.screenshot(path=str(ARTIFACTS / "5-overview.png"), full_page=True)
        browser.close()
