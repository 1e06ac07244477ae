"""Schedules in-process: planning (catch-up, DST), the scheduler's pass against the real database,
code declarations and their checks, the console, the command and the API."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connections
from django.test import Client, override_settings

from queueapp import apikeys, checks, cron, models, schedules, store
from tests import tasks
from workers.scheduler import Scheduler

pytestmark = pytest.mark.django_db(transaction=True)

PARIS = ZoneInfo("Europe/Paris")
UTC = dt.UTC


def make_schedule(cron_expression: str = "*/5 * * * *", **fields: object) -> models.Schedule:
    values: dict[str, object] = {
        "name": "every-5",
        "task_path": tasks.add.module_path,
        "cron": cron_expression,
        "args": [1, 2],
        "catch_up": models.CatchUp.ALL,
        "catch_up_limit": 1000,
        **fields,
    }
    schedule = models.Schedule(**values)
    if schedule.next_run_at is None:
        schedule.next_run_at = schedules.next_run_after(schedule)
    schedule.save()
    return schedule


def ticks_of(schedule: models.Schedule) -> list[dt.datetime]:
    return list(schedule.ticks.order_by("tick_at").values_list("tick_at", flat=True))


def test_a_daily_0230_runs_once_on_both_dst_days_in_paris() -> None:
    # Clocks skip 02:00-03:00 on 29 March 2026 and repeat it on 25 October 2026: the scheduler runs
    # every missed day since 27 March in one pass (catch_up all), through the database.
    start = dt.datetime(2026, 3, 27, 12, tzinfo=PARIS)
    schedule = make_schedule("30 2 * * *", name="nightly", timezone="Europe/Paris", next_run_at=start)
    assert store.database_now() > dt.datetime(2026, 10, 27, tzinfo=UTC), "the test needs both days behind"
    counts = Scheduler(grace=10).run_once()
    assert counts is not None
    days = Counter(tick.astimezone(PARIS).date() for tick in ticks_of(schedule))
    assert set(days.values()) == {1}
    spring = [
        t.astimezone(PARIS) for t in ticks_of(schedule) if t.astimezone(PARIS).date() == dt.date(2026, 3, 29)
    ]
    autumn = [t for t in ticks_of(schedule) if t.astimezone(PARIS).date() == dt.date(2026, 10, 25)]
    assert [t.strftime("%H:%M %Z") for t in spring] == ["03:00 CEST"]  # 02:30 does not exist that day
    assert [t.astimezone(UTC).strftime("%H:%M") for t in autumn] == ["00:30"]  # the first 02:30 (CEST)
    assert (
        models.LiveTask.objects.filter(unique_key__startswith="schedule:nightly@").count()
        == counts["enqueued"]
    )


def test_the_plan_matches_cron_across_both_dst_changes() -> None:
    for day in (dt.datetime(2026, 3, 28, 12, tzinfo=PARIS), dt.datetime(2026, 10, 24, 12, tzinfo=PARIS)):
        ticks = cron.next_ticks("30 2 * * *", "Europe/Paris", day, 3)
        assert [t.astimezone(PARIS).day for t in ticks] == [day.day + 1, day.day + 2, day.day + 3]
    hourly = cron.next_ticks("0 * * * *", "Europe/Paris", dt.datetime(2026, 10, 25, 0, 30, tzinfo=PARIS), 4)
    assert [t - hourly[0] for t in hourly] == [dt.timedelta(hours=n) for n in range(4)]  # 02:00 twice


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [("none", (1, 12)), ("latest", (1, 12)), ("all", (4, 9))],
)
def test_missed_ticks_follow_catch_up(catch_up: str, expected: tuple[int, int]) -> None:
    start = dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
    plan = cron.plan(
        "*/5 * * * *", "UTC", next_run_at=start, now=start + dt.timedelta(hours=1, seconds=3),
        grace=10, catch_up=catch_up, limit=3,
    )  # fmt: skip
    assert (len(plan.ticks), plan.missed) == expected
    assert plan.ticks[-1] == start + dt.timedelta(hours=1)  # on time: always runs
    assert plan.next_run_at == start + dt.timedelta(hours=1, minutes=5)


def test_latest_runs_the_latest_missed_tick_when_none_is_on_time() -> None:
    start = dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
    now = start + dt.timedelta(hours=1, minutes=2)
    latest = cron.plan("*/5 * * * *", "UTC", next_run_at=start, now=now, grace=10, catch_up="latest", limit=3)
    none = cron.plan("*/5 * * * *", "UTC", next_run_at=start, now=now, grace=10, catch_up="none", limit=3)
    assert latest.ticks == [start + dt.timedelta(hours=1)]
    assert latest.missed == 12
    assert none.ticks == []
    assert none.missed == 13


def test_a_pass_enqueues_due_ticks_once_and_moves_the_cursor() -> None:
    now = store.database_now().replace(microsecond=0)
    schedule = make_schedule("* * * * * *", next_run_at=now - dt.timedelta(seconds=3))
    counts = Scheduler(grace=10).run_once()
    assert counts is not None
    assert counts["enqueued"] >= 4
    assert counts["duplicate"] == 0
    schedule.refresh_from_db()
    assert schedule.next_run_at > now
    task = models.Task.objects.get(unique_key=schedules.tick_key("every-5", ticks_of(schedule)[0]))
    assert (task.task_path, task.args, task.queue_name) == (tasks.add.module_path, [1, 2], "default")


def test_racing_schedulers_enqueue_each_tick_once() -> None:
    # Both read the same cursor, as two workers can: the (schedule, tick) key lets one insert.
    now = store.database_now().replace(microsecond=0)
    make_schedule("* * * * * *", next_run_at=now - dt.timedelta(seconds=5))
    due = store.due_schedules()
    results: list[Counter[str]] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        results.append(Scheduler(grace=30).run_schedule(due[0]))
        connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    total = sum(results, Counter())
    assert total["enqueued"] >= 6
    assert total["duplicate"] == total["enqueued"]
    ticks = models.ScheduleTick.objects.values_list("tick_at", flat=True)
    assert len(ticks) == len(set(ticks)) == total["enqueued"]
    assert models.LiveTask.objects.count() == total["enqueued"]


def test_a_schedule_whose_task_is_not_registered_is_logged_and_counted_not_crashed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = store.database_now()
    schedule = make_schedule(
        "* * * * * *", task_path="tests.tasks.gone", next_run_at=now - dt.timedelta(seconds=2)
    )
    counts = Scheduler(grace=10).run_once()
    assert counts is not None
    assert counts["failed"] >= 2
    assert counts["enqueued"] == 0
    assert "schedule_task_refused schedule=every-5" in caplog.text
    assert models.LiveTask.objects.count() == 0
    # The cursor moved past the refused ticks: said once per tick. (Not "nothing due": a per-second
    # schedule may be due again by the time that is asked, on a loaded machine.)
    schedule.refresh_from_db()
    assert schedule.next_run_at is not None
    assert schedule.next_run_at > now


@override_settings(
    TASKQUEUE={
        **settings.TASKQUEUE,
        "SCHEDULE": {
            "bad-cron": {"task": "tests.tasks.add", "cron": "61 * * * *"},
            "bad-task": {"task": "tests.tasks.nope", "cron": "* * * * *"},
            "bad-zone": {"task": "tests.tasks.add", "cron": "* * * * *", "timezone": "Mars/Olympus"},
        },
    }
)
def test_the_setting_is_checked_at_start_up_with_what_is_wrong() -> None:
    errors = [error.msg for error in checks.check_schedules()]
    assert any("'bad-cron'" in e and "invalid cron expression '61 * * * *': Bad minute" in e for e in errors)
    assert any("'bad-task'" in e and "task 'tests.tasks.nope' is not registered" in e for e in errors)
    assert any("'bad-zone'" in e and "unknown time zone 'Mars/Olympus'" in e for e in errors)


@override_settings(
    TASKQUEUE={
        **settings.TASKQUEUE,
        "SCHEDULE": {"x": {"task": "a", "cronn": "*"}},
    }
)
def test_a_malformed_setting_entry_is_a_check_error() -> None:
    (error,) = checks.check_schedules()
    assert "needs 'task' and 'cron'" in error.msg
    assert "cronn" in error.msg


def test_code_schedules_are_written_at_start_and_dropped_when_no_longer_declared() -> None:
    schedules.periodic(cron="0 3 * * *", name="code-nightly", timezone="Europe/Paris", args=(1, 1))(tasks.add)
    try:
        Scheduler(grace=10).run_once()
        schedule = models.Schedule.objects.get(name="code-nightly")
        assert (schedule.source, schedule.cron, schedule.args, schedule.enabled) == (
            "code",
            "0 3 * * *",
            [1, 1],
            True,
        )
        assert schedule.next_run_at is not None
        assert schedule.next_run_at.astimezone(PARIS).hour == 3
        schedule.enabled = False  # the console's switch survives a restart
        schedule.save()
        Scheduler(grace=10).run_once()
        assert models.Schedule.objects.get(name="code-nightly").enabled is False
    finally:
        del schedules._decorated["code-nightly"]
    Scheduler(grace=10).run_once()
    assert not models.Schedule.objects.filter(name="code-nightly").exists()


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def schedule_form(**fields: str) -> dict[str, str]:
    return {
        "name": "nightly",
        "task_path": tasks.add.module_path,
        "cron": "30 2 * * *",
        "timezone": "Europe/Paris",
        "args": "[1, 2]",
        "kwargs": "{}",
        "queue_name": "default",
        "priority": "0",
        "catch_up": "latest",
        "catch_up_limit": "100",
        "enabled": "on",
        **fields,
    }


def test_the_admin_form_refuses_an_invalid_cron_expression_saying_why(admin_client: Client) -> None:
    response = admin_client.post("/admin/queueapp/schedule/add/", schedule_form(cron="30 25 * * *"))
    assert response.status_code == 200
    assert "invalid cron expression &#x27;30 25 * * *&#x27;: Bad hour" in response.content.decode()
    response = admin_client.post("/admin/queueapp/schedule/add/", schedule_form(timezone="Paris"))
    assert "unknown time zone" in response.content.decode()
    assert not models.Schedule.objects.exists()


def test_the_admin_creates_shows_and_runs_a_schedule(admin_client: Client) -> None:
    response = admin_client.post("/admin/queueapp/schedule/add/", schedule_form())
    assert response.status_code == 302
    schedule = models.Schedule.objects.get(name="nightly")
    assert schedule.source == "admin"
    assert schedule.next_run_at is not None
    page = admin_client.get(f"/admin/queueapp/schedule/{schedule.id}/change/").content.decode()
    assert "At 02:30 every day" in page
    assert page.count(":30:00 CE") == 5  # the next five runs, Paris time
    assert "never" in page
    response = admin_client.post(
        "/admin/queueapp/schedule/",
        {"action": "run_now", "_selected_action": [str(schedule.id)]},
        follow=True,
    )
    task = models.Task.objects.get()
    assert f"enqueued task {task.id}" in response.content.decode()
    page = admin_client.get(f"/admin/queueapp/schedule/{schedule.id}/change/").content.decode()
    assert f'href="/admin/queueapp/task/{task.id}/change/"' in page
    assert "READY" in page
    assert "(run now)" in page
    listing = admin_client.get("/admin/queueapp/schedule/").content.decode()
    assert "At 02:30 every day" in listing
    admin_client.post(
        "/admin/queueapp/schedule/", {"action": "disable", "_selected_action": [str(schedule.id)]}
    )
    assert models.Schedule.objects.get().enabled is False
    found = admin_client.get("/admin/queueapp/task/", {"q": f"key:{task.unique_key}"}).content.decode()
    assert f"/admin/queueapp/task/{task.id}/change/" in found


def test_the_command_and_the_api_list_schedules_with_next_and_last_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    schedule = make_schedule("30 2 * * *", name="nightly", timezone="Europe/Paris")
    task_id = schedules.run_now(schedule)
    call_command("schedules")
    out = capsys.readouterr().out
    assert "nightly  30 2 * * * (At 02:30 every day, Europe/Paris)" in out
    assert f"next: {schedule.next_run_at.isoformat()}" in out
    assert f"task {task_id} READY" in out
    key = apikeys.create_api_key("reader")[1]
    response = Client().get("/api/schedules", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    (item,) = response.json()["schedules"]
    assert item["name"] == "nightly"
    assert item["description"] == "At 02:30 every day"
    assert item["last_run"]["task_id"] == task_id
    assert item["last_run"]["status"] == "READY"
    assert dt.datetime.fromisoformat(item["next_run_at"]) == schedule.next_run_at
    call_command("schedules", "--json")
    assert json.loads(capsys.readouterr().out)["schedules"][0]["name"] == "nightly"


def test_old_ticks_are_purged_but_each_schedules_latest_stays() -> None:
    schedule = make_schedule("* * * * *")
    old = store.database_now() - dt.timedelta(days=30)
    for minute in range(3):
        at = old + dt.timedelta(minutes=minute)
        models.ScheduleTick.objects.create(schedule=schedule, tick_at=at, enqueued_at=at)
    models.ScheduleTick.objects.create(schedule=schedule, tick_at=old - dt.timedelta(days=1))  # caught up now
    assert store.purge_schedule_ticks(older_than=7 * 86400) == 2
    assert ticks_of(schedule) == [old - dt.timedelta(days=1), old + dt.timedelta(minutes=2)]


def test_ticks_are_counted_by_outcome_and_metrics_show_overdue_schedules() -> None:
    from workers import metrics as worker_metrics

    def counted(outcome: str) -> float:
        return worker_metrics.SCHEDULE_TICKS.labels("every-5", outcome)._value.get()  # type: ignore[attr-defined,no-any-return]

    before = {outcome: counted(outcome) for outcome in ("enqueued", "missed")}
    now = store.database_now().replace(microsecond=0)
    make_schedule("* * * * * *", next_run_at=now - dt.timedelta(minutes=1), catch_up=models.CatchUp.NONE)
    page = Client().get("/metrics").content.decode()
    overdue = next(
        line
        for line in page.splitlines()
        if line.startswith('taskqueue_schedule_overdue_seconds{schedule="every-5"}')
    )
    assert float(overdue.split()[-1]) >= 59
    counts = Scheduler(grace=10).run_once()
    assert counts is not None
    assert counted("enqueued") - before["enqueued"] == counts["enqueued"] > 0
    assert counted("missed") - before["missed"] == counts["missed"] >= 49
    page = Client().get("/metrics").content.decode()
    assert 'taskqueue_schedule_overdue_seconds{schedule="every-5"} 0.0' in page


def test_a_code_schedule_is_read_only_in_the_admin_but_can_be_switched_off(admin_client: Client) -> None:
    schedule = make_schedule("30 2 * * *", name="from-code", source="code")
    page = admin_client.get(f"/admin/queueapp/schedule/{schedule.id}/change/").content.decode()
    assert 'name="cron"' not in page
    assert "30 2 * * *" in page
    response = admin_client.post(f"/admin/queueapp/schedule/{schedule.id}/change/", {"cron": "* * * * *"})
    assert response.status_code == 302
    schedule.refresh_from_db()
    assert (schedule.cron, schedule.enabled) == ("30 2 * * *", False)


def test_a_unique_task_on_a_schedule_does_not_overlap_its_previous_run() -> None:
    now = store.database_now().replace(microsecond=0)
    make_schedule(
        "* * * * * *",
        task_path=tasks.refresh.module_path,
        args=[5],
        next_run_at=now - dt.timedelta(seconds=3),
    )
    Scheduler(grace=10).run_once()
    ticks = models.ScheduleTick.objects.all()
    assert len(ticks) >= 4
    (task,) = models.LiveTask.objects.all()
    assert {tick.task_id for tick in ticks} == {task.id}


def test_one_schedules_error_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    """A zone missing from this image's tzdata (another image wrote it) once raised out of the pass:
    the scheduler thread died, and every worker with it, over and over."""
    now = store.database_now()
    due = now - dt.timedelta(seconds=1)
    make_schedule("* * * * * *", name="elsewhere", timezone="Mars/Olympus_Mons", next_run_at=due)
    good = make_schedule("* * * * * *", name="good", next_run_at=due)
    counts = Scheduler(grace=10).run_once()
    assert counts is not None
    assert counts["error"] == 1
    assert counts["enqueued"] >= 1
    assert "schedule_error schedule=elsewhere" in caplog.text
    assert models.LiveTask.objects.count() == counts["enqueued"]
    good.refresh_from_db()
    assert good.next_run_at is not None
    assert good.next_run_at > now
    stuck = models.Schedule.objects.get(name="elsewhere")
    assert stuck.next_run_at == due  # its cursor waits for the next pass
