"""The console as a newcomer meets it, in a real browser (Playwright driving Debian's Chromium) at
1,400 px with the sidebar open: the overview linked from the index and the sidebar, a styled
breadcrumb, charts with a time axis, a task list that fits, a cancelled task shown plainly, times
with their zone, and a worker's page with its running and past tasks. Screenshots go to
test-artifacts/browser/."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from queueapp import models, store
from tests import tasks
from tests.conftest import make_worker
from tests.helpers import GunicornServer, end_task
from tests.test_browser import ARTIFACTS, CHROMIUM, closing_connections

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it as root)"),
]

PASSWORD = "correct horse battery staple"


@pytest.fixture
def server(tmp_path: Path, transactional_db: None) -> Iterator[GunicornServer]:
    gunicorn = GunicornServer(log_dir=tmp_path, env={"DEBUG": "1"})  # DEBUG: static files as they are
    yield gunicorn
    gunicorn.stop()


@pytest.fixture
def page(server: GunicornServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # the ORM calls below run beside Playwright's loop
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    User.objects.create_superuser("oncall", "oncall@example.com", PASSWORD)
    with sync_playwright() as playwright, closing_connections():
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(
            viewport={"width": 1400, "height": 1000}, base_url=f"http://127.0.0.1:{server.port}"
        )
        page.goto("/admin/login/")
        page.fill("#id_username", "oncall")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#site-name")
        yield page
        browser.close()


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not displayed"
    return dict(found)


def test_the_overview_is_linked_from_the_index_and_the_sidebar_and_its_charts_have_a_time_axis(
    page: Any,
) -> None:
    from playwright.sync_api import expect

    page.goto("/")
    page.click("#links >> text=Operations console")  # the landing page leads to the console
    index_link = page.locator("#content-main a", has_text="Queue overview")
    expect(index_link).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "console-1-index.png"), full_page=True)
    index_link.click()
    expect(page.locator("h1")).to_have_text("Queue overview")
    expect(page.locator("#nav-sidebar a", has_text="Queue overview")).to_be_visible()

    crumbs = page.locator(".breadcrumbs")
    assert crumbs.locator("li").all_text_contents() == ["Home", "Task queue", "Queue overview"]
    assert crumbs.evaluate("e => getComputedStyle(e).backgroundColor") not in (
        "rgba(0, 0, 0, 0)",
        "transparent",
    )
    sidebar, content = box(page, "#nav-sidebar"), box(page, "#content")
    crumbs_box = box(page, ".breadcrumbs")
    assert crumbs_box["y"] + crumbs_box["height"] <= sidebar["y"] + 1
    assert content["x"] >= sidebar["x"] + sidebar["width"] - 1  # the page's content beside the sidebar

    charts = page.locator("svg[role=img]")
    expect(charts).to_have_count(4)
    for i in range(4):
        ticks = charts.nth(i).locator("text.tick").all_text_contents()
        assert len(ticks) >= 5, ticks
        assert all(re.fullmatch(r"\d\d:\d0", tick) for tick in ticks), ticks
        expect(charts.nth(i).locator("text.axis-title")).to_have_text("time (UTC), per minute")
    page.screenshot(path=str(ARTIFACTS / "console-2-overview.png"), full_page=True)


def test_the_task_list_fits_and_a_cancelled_task_reads_plainly(page: Any) -> None:
    from playwright.sync_api import expect

    worker = make_worker()
    running = int(tasks.sleep_then_return.enqueue(1, value="x" * 40).id)
    store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    done = int(tasks.add.enqueue(1, 2).id)
    store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    end_task(done, "SUCCESSFUL")
    cancelled = int(tasks.send_email.enqueue("ada@example.com").id)
    assert store.cancel_task(cancelled) == "CANCELLED"
    tasks.raises_unstorable_text.enqueue()  # a longer name than any demo task's

    page.goto("/admin/queueapp/task/")
    expect(page.locator("#result_list tbody tr")).to_have_count(4)
    assert page.locator("#nav-sidebar").is_visible()
    results = page.locator(".results")  # the list scrolls sideways inside this when it does not fit
    widths = results.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert widths[0] <= widths[1], f"the task list needs {widths[0]} px and has {widths[1]}"
    headers = page.locator("#result_list thead th").all_text_contents()
    for column in ("Task", "Status", "Attempts", "Duration", "Worker"):
        assert any(column.lower() in header.lower() for header in headers), (column, headers)
    last_header = page.locator("#result_list thead th").last
    assert last_header.bounding_box()["x"] + last_header.bounding_box()["width"] <= 1400

    row = page.locator("#result_list tbody tr", has=page.locator(f"a:text-is('{cancelled}')"))
    badge = row.locator(".field-coloured_status span")
    expect(badge).to_have_text("CANCELLED")
    assert badge.bounding_box()["height"] < 24, "the badge wraps"
    page.screenshot(path=str(ARTIFACTS / "console-3-task-list.png"), full_page=True)

    page.goto(f"/admin/queueapp/task/{done}/change/")
    for field in ("enqueued_at", "started_at", "finished_at"):
        expect(page.locator(f".field-{field} .readonly")).to_contain_text(" UTC")
    page.goto(f"/admin/queueapp/task/{running}/change/")
    page.locator(".field-worker_link a").click()  # from the task's page to its worker's
    expect(page.locator(".field-id .readonly")).to_have_text(str(worker.id))
    page.screenshot(path=str(ARTIFACTS / "console-4-task-page.png"), full_page=True)


def test_a_workers_page_lists_what_it_runs_and_links_what_it_ran(page: Any) -> None:
    from playwright.sync_api import expect

    worker = make_worker()
    ran = int(tasks.add.enqueue(1, 2).id)
    store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    end_task(ran, "SUCCESSFUL")
    running = int(tasks.add.enqueue(3, 4).id)
    store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    other = make_worker()
    int(tasks.add.enqueue(5, 6).id)
    store.claim_tasks(worker_id=other.id, queues=["default"], limit=1)

    page.goto(f"/admin/queueapp/worker/{worker.id}/change/")
    now = page.locator(".field-running_now")
    expect(now.locator("a")).to_have_count(1)
    expect(now).to_contain_text(f"#{running} add")
    page.screenshot(path=str(ARTIFACTS / "console-5-worker.png"), full_page=True)
    now.locator("a").click()
    expect(page.locator(".field-id .readonly")).to_have_text(str(running))

    page.goto(f"/admin/queueapp/worker/{worker.id}/change/")
    page.locator(".field-ran a").click()
    rows = page.locator("#result_list tbody th a")
    expect(rows).to_have_count(2)  # waits for the filtered list to load (all_text_contents does not)
    ids = rows.all_text_contents()
    assert sorted(int(i) for i in ids) == sorted([ran, running])
    expect(page.locator("#changelist-filter")).to_contain_text(str(worker.id)[:8])
    assert models.Task.objects.filter(worker_id=other.id).count() == 1  # shown on its own page only
