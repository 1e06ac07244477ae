"""Flow control through the ways in: REST (scoped keys), the admin's Queues page and task page,
`manage.py queues`, and /metrics."""

from __future__ import annotations

import io

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings

from queueapp import apikeys, models, store
from tests.conftest import make_worker
from tests.test_flow_control import held_tasks, put

pytestmark = pytest.mark.django_db(transaction=True)


def bearer(*, manage: bool) -> Client:
    row, key = apikeys.create_api_key("ops" if manage else "reader")
    models.ApiKey.objects.filter(id=row.id).update(can_manage_queues=manage)
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_pause_and_resume_need_a_key_that_may_manage_queues() -> None:
    put("imports")
    reader, ops = bearer(manage=False), bearer(manage=True)

    refused = reader.post("/api/queues/imports/pause", content_type="application/json")
    assert refused.status_code == 403
    assert "can_manage_queues" in refused.json()["detail"]
    assert not models.QueueControl.objects.filter(name="imports").exists()

    paused = ops.post("/api/queues/imports/pause", content_type="application/json")
    assert paused.status_code == 200
    assert paused.json()["paused"] is True
    assert paused.json()["ready"] == 1
    listed = {q["name"]: q for q in reader.get("/api/queues").json()["queues"]}
    assert listed["imports"]["paused"] is True
    assert ops.post("/api/queues/imports/resume", content_type="application/json").json()["paused"] is False
    assert ops.post(f"/api/queues/{'x' * 101}/pause", content_type="application/json").status_code == 422


def test_get_queues_shows_limits_and_figures() -> None:
    models.QueueControl.objects.create(
        name="emails", rate_limit=600, rate_period=60, concurrency_limit=5, key_rate_limit=2
    )
    put("emails")
    put("emails", later=True)
    queue = next(q for q in bearer(manage=False).get("/api/queues").json()["queues"] if q["name"] == "emails")
    assert queue | {"oldest_ready_seconds": 0} == {
        "name": "emails",
        "paused": False,
        "concurrency_limit": 5,
        "key_concurrency": 1,
        "rate_limit": 600,
        "rate_period": 60.0,
        "ready": 1,
        "scheduled": 1,
        "running": 0,
        "started_last_minute": 0,
        "oldest_ready_seconds": 0,
        "breaker_threshold": None,
        "breaker_state": "closed",
        "key_rate_limit": 2,
        "key_rate_period": 1.0,
    }
    assert queue["oldest_ready_seconds"] >= 0


def test_the_api_says_why_a_task_waits(sessions) -> None:
    client = bearer(manage=False)
    for code, task_id in held_tasks(sessions).items():
        body = client.get(f"/api/tasks/{task_id}").json()
        assert [hold["code"] for hold in body["waiting_on"]] == [code]
        assert body["waiting_on"][0]["message"]


def test_the_task_page_says_why_a_task_waits(sessions, admin_client: Client) -> None:
    for code, task_id in held_tasks(sessions).items():
        page = admin_client.get(f"/admin/queueapp/task/{task_id}/change/").content.decode()
        assert f'data-hold="{code}"' in page
        assert page.count("data-hold=") == 1, code


def test_the_queues_page_shows_every_queue_and_pauses_one(admin_client: Client) -> None:
    put("imports")
    page = admin_client.get("/admin/queueapp/queuecontrol/")
    assert page.status_code == 200
    assert "imports" in page.content.decode()
    response = admin_client.post("/admin/queueapp/queuecontrol/imports/pause/", {"paused": "1"}, follow=True)
    assert "Paused queue imports" in response.content.decode()
    assert models.QueueControl.objects.get(name="imports").paused


def test_the_admin_refuses_invalid_limits_with_a_clear_message(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/queueapp/queuecontrol/add/",
        {"name": "emails", "concurrency_limit": "0", "key_concurrency": "1", "rate_period": "1"},
    )
    assert "A concurrency limit is at least 1" in response.content.decode()
    assert not models.QueueControl.objects.exists()
    response = admin_client.post(
        "/admin/queueapp/queuecontrol/add/",
        {"name": "emails", "key_concurrency": "1", "rate_limit": "10", "rate_period": "0"},
    )
    assert "The rate period is a positive number of seconds" in response.content.decode()
    assert not models.QueueControl.objects.exists()
    for values, message in [
        ({"key_rate_limit": "0", "key_rate_period": "1"}, "A rate limit per key is at least 1 start"),
        ({"key_rate_limit": "2", "key_rate_period": "-1"}, "The rate period per key is a positive number"),
    ]:
        response = admin_client.post(
            "/admin/queueapp/queuecontrol/add/",
            {"name": "emails", "key_concurrency": "1", "rate_period": "1", **values},
        )
        assert message in response.content.decode()
        assert not models.QueueControl.objects.exists()


def seeding(seeds: dict[str, dict[str, object]]) -> dict[str, object]:
    return {**settings.TASKQUEUE, "FLOW_CONTROL": seeds}


def test_the_command_pauses_resumes_lists_and_seeds() -> None:
    out = io.StringIO()
    call_command("queues", "pause", "imports", "emails", stdout=out)
    assert set(models.QueueControl.objects.filter(paused=True).values_list("name", flat=True)) == {
        "imports",
        "emails",
    }
    call_command("queues", "resume", "emails", stdout=out)
    call_command("queues", "list", stdout=out)
    assert any(line.split()[:2] == ["imports", "yes"] for line in out.getvalue().splitlines())

    with override_settings(TASKQUEUE=seeding({"reports": {"concurrency_limit": 2}, "imports": {}})):
        call_command("queues", "seed", stdout=out)
    assert models.QueueControl.objects.get(name="reports").concurrency_limit == 2
    assert models.QueueControl.objects.get(name="imports").paused  # existing rows are left alone
    with (
        override_settings(TASKQUEUE=seeding({"y": {"rate_limit": 5}, "x": {"concurency_limit": 2}})),
        pytest.raises(CommandError, match="unknown settings"),
    ):
        call_command("queues", "seed")
    assert not models.QueueControl.objects.filter(name__in=["x", "y"]).exists()


def test_metrics_show_flow_control() -> None:
    models.QueueControl.objects.create(
        name="emails", rate_limit=600, rate_period=60, concurrency_limit=5, key_rate_limit=2
    )
    models.QueueControl.objects.create(name="payments", breaker_threshold=0.5)
    store.set_paused("imports", True)
    make_worker(["emails"])
    text = Client().get("/metrics").content.decode()
    assert 'taskqueue_queue_paused{queue="imports"} 1.0' in text
    assert 'taskqueue_queue_concurrency_limit{queue="emails"} 5.0' in text
    assert 'taskqueue_queue_rate_limit_per_second{queue="emails"} 10.0' in text
    assert 'taskqueue_queue_key_rate_limit_per_second{queue="emails"} 2.0' in text
    assert 'taskqueue_queue_breaker_open{queue="payments"} 0.0' in text
    models.QueueControl.objects.filter(name="payments").update(breaker_state="open")
    assert 'taskqueue_queue_breaker_open{queue="payments"} 1.0' in Client().get("/metrics").content.decode()


def test_an_open_breaker_shows_on_the_queues_page_and_in_the_api(admin_client: Client) -> None:
    models.QueueControl.objects.create(name="payments", breaker_threshold=0.5, breaker_state="open")
    assert 'data-breaker="open"' in admin_client.get("/admin/queueapp/queuecontrol/").content.decode()
    listed = {q["name"]: q for q in bearer(manage=False).get("/api/queues").json()["queues"]}
    assert listed["payments"]["breaker_state"] == "open"
    assert listed["payments"]["breaker_threshold"] == 0.5
