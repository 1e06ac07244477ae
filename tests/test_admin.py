"""The console in-process: pages, counts that do not scan, actions with permissions and reports."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from queueapp import apikeys, models, store
from tests import tasks
from tests.conftest import make_worker
from tests.helpers import end_task

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def act(client: Client, action: str, ids: list[int], **extra: str) -> str:
    response = client.post(
        "/admin/queueapp/task/",
        {"action": action, "_selected_action": [str(i) for i in ids], **extra},
        follow=True,
    )
    assert response.status_code == 200
    return " ".join(str(m) for m in response.context["messages"])


def test_pages_render(admin_client: Client) -> None:
    tasks.add.enqueue(1, 2)
    make_worker()
    task_id = models.Task.objects.get().id
    for url in (
        "/admin/",
        "/admin/queueapp/task/",
        "/admin/queueapp/task/?status__exact=READY",
        "/admin/queueapp/task/?q=tests.tasks",
        f"/admin/queueapp/task/?q={task_id}",
        f"/admin/queueapp/task/{task_id}/change/",
        "/admin/queueapp/worker/",
        "/admin/queueapp/apikey/",
        "/admin/queueapp/task/overview/",
    ):
        assert admin_client.get(url).status_code == 200, url


def test_the_task_list_never_counts_the_whole_table(admin_client: Client) -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(30))
    with CaptureQueriesContext(connection) as queries:
        admin_client.get("/admin/queueapp/task/?status__exact=READY")
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts, "expected a capped count"
    assert all(re.search(r"LIMIT \d+", sql) for sql in counts), counts


def test_retry_reports_what_it_did_and_what_it_skipped(admin_client: Client) -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(3))
    failed, ready, cancelled = models.Task.objects.order_by("id")
    end_task(failed.id, "FAILED", attempts=3, max_attempts=3)
    store.cancel_task(cancelled.id)

    message = act(admin_client, "retry_tasks", [failed.id, ready.id, cancelled.id])

    assert message == "Retried 2 task(s); skipped 1 not FAILED or CANCELLED (READY)"
    assert models.Task.objects.get(id=failed.id).status == "READY"
    assert models.Task.objects.get(id=failed.id).max_attempts == 6


def test_cancel_and_set_priority_actions(admin_client: Client) -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(2))
    first, second = models.Task.objects.order_by("id")
    assert act(admin_client, "cancel_tasks", [first.id]) == "Cancelled 1 task(s)."
    assert act(admin_client, "cancel_tasks", [first.id]) == "Cancelled 0 task(s); skipped 1 already finished"
    message = act(admin_client, "set_priority", [first.id, second.id], priority="42")
    assert message == "Set priority 42 on 1 task(s); skipped 1 not SCHEDULED or READY"
    assert models.Task.objects.get(id=second.id).priority == 42
    assert "Give a priority" in act(admin_client, "set_priority", [second.id], priority="500")


def test_actions_need_their_permission() -> None:
    staff = User.objects.create_user("viewer", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_task"))
    client = Client()
    client.force_login(staff)
    tasks.add.enqueue(1, 2)
    task = models.Task.objects.get()
    end_task(task.id, "FAILED")

    page = client.get("/admin/queueapp/task/")
    assert page.status_code == 200
    assert b"retry_tasks" not in page.content
    client.post("/admin/queueapp/task/", {"action": "retry_tasks", "_selected_action": [str(task.id)]})
    assert models.Task.objects.get(id=task.id).status == "FAILED"

    staff.user_permissions.add(Permission.objects.get(codename="retry_task"))
    staff = User.objects.get(id=staff.id)  # permissions are cached per user object
    client.force_login(staff)
    assert b"retry_tasks" in client.get("/admin/queueapp/task/").content


def test_api_keys_are_shown_once_on_creation_and_revoked_by_action(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/queueapp/apikey/add/", {"name": "partner", "allowed_tasks": "send-*, add"}, follow=True
    )
    message = " ".join(str(m) for m in response.context["messages"])
    key = re.search(r"tq_\w+_[\w-]+", message)
    assert key, message
    row = models.ApiKey.objects.get(name="partner")
    assert row.task_patterns == ["send-*", "add"]
    assert apikeys.authenticate(key.group(0)) == row
    assert key.group(0).encode() not in admin_client.get(f"/admin/queueapp/apikey/{row.id}/change/").content

    admin_client.post("/admin/queueapp/apikey/", {"action": "revoke", "_selected_action": [str(row.id)]})
    assert apikeys.authenticate(key.group(0)) is None


def test_the_overview_counts_live_tasks_and_the_last_hours_finished_ones_per_queue(
    admin_client: Client,
) -> None:
    waiting = tasks.add.enqueue_many(((i, i), {}) for i in range(3))
    tasks.add.using(run_after=timezone.now() + dt.timedelta(hours=1)).enqueue(9, 9)
    end_task(int(waiting[0].id), "FAILED")
    end_task(int(waiting[1].id), "SUCCESSFUL")
    tasks.send_email.enqueue("a@example.com")
    store.cancel_task(int(tasks.send_email.enqueue("b@example.com").id))

    queues = admin_client.get("/admin/queueapp/task/overview/").context["queues"]

    assert queues["default"]["counts"] == {"READY": 1, "SCHEDULED": 1}
    assert queues["default"]["finished"] == {"FAILED": 1, "SUCCESSFUL": 1}
    assert (queues["emails"]["counts"], queues["emails"]["finished"]) == ({"READY": 1}, {"CANCELLED": 1})


def test_the_workers_page_says_which_process_is_the_housekeeper(admin_client: Client) -> None:
    def line() -> str:
        page = admin_client.get("/admin/queueapp/worker/").content.decode()
        return " ".join(page.split('<p id="housekeeper">')[1].split("</p>")[0].split())

    assert line().startswith("<strong>No housekeeper</strong> yet: no worker has started")
    now = timezone.now()
    models.Housekeeper.objects.create(
        role=store.HOUSEKEEPING,
        holder=uuid.uuid4(),
        hostname="web-3",
        pid=4242,
        taken_at=now - dt.timedelta(minutes=5),
        expires_at=now + dt.timedelta(seconds=5),
    )
    assert "<strong>web-3</strong>, pid 4242, since" in line()
    models.Housekeeper.objects.update(expires_at=now - dt.timedelta(minutes=1))
    assert line().startswith(
        "<strong>No housekeeper</strong>: the last one (web-3, pid 4242) stopped renewing"
    )
