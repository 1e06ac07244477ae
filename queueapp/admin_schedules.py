"""The console's schedules: create, edit, enable/disable and "run now", with the expression in
words, the next five runs and the last run. Thin: checks come from queueapp.cron, runs from
queueapp.schedules."""

from __future__ import annotations

import itertools
from typing import Any
from zoneinfo import ZoneInfo

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTask
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from queueapp import admin_views, cron, models, registry, schedules, store

CODE_OWNED = (
    "name",
    "task_path",
    "cron",
    "timezone",
    "args",
    "kwargs",
    "queue_name",
    "priority",
    "catch_up",
    "catch_up_limit",
)
"""A schedule declared in code is the code's: the console may only enable or disable it."""


class ScheduleForm(forms.ModelForm[models.Schedule]):
    task_path = forms.ChoiceField(label="Task", help_text="A task registered in this process")
    queue_name = forms.ChoiceField(label="Queue")

    class Meta:
        model = models.Schedule
        fields = [*CODE_OWNED, "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.source == "code":  # shown read-only by the admin; only `enabled` is edited
            for name in CODE_OWNED:
                self.fields.pop(name, None)
            return
        queues = sorted(task_backends["default"].queues)
        self.fields["task_path"].choices = [(path, path) for path in registry.paths()]  # type: ignore[attr-defined]
        self.fields["queue_name"].choices = [(queue, queue) for queue in queues]  # type: ignore[attr-defined]

    def clean_cron(self) -> str:
        expression = " ".join(self.cleaned_data["cron"].split())
        error = cron.cron_error(expression)
        if error:
            raise forms.ValidationError(error)
        return expression

    def clean_timezone(self) -> str:
        zone: str = self.cleaned_data["timezone"].strip()
        error = cron.timezone_error(zone)
        if error:
            raise forms.ValidationError(error)
        return zone

    def clean_args(self) -> Any:
        if not isinstance(self.cleaned_data["args"], list):
            raise forms.ValidationError('args must be a JSON list, e.g. [1, "two"]')
        return self.cleaned_data["args"]

    def clean_kwargs(self) -> Any:
        if not isinstance(self.cleaned_data["kwargs"], dict):
            raise forms.ValidationError('kwargs must be a JSON object, e.g. {"name": "value"}')
        return self.cleaned_data["kwargs"]


@admin.register(models.Schedule)
class ScheduleAdmin(admin.ModelAdmin[models.Schedule]):
    form = ScheduleForm
    list_display = (
        "name",
        "cron",
        "in_words",
        "timezone",
        "task_path",
        "enabled",
        "source",
        "next_run_at",
        "last_run",
    )
    list_filter = ("enabled", "source")
    search_fields = ("name", "task_path")
    ordering = ("name",)
    actions = ["run_now", "enable", "disable"]
    readonly_fields = ("source", "in_words", "next_runs", "last_run")

    def get_readonly_fields(
        self, request: HttpRequest, obj: models.Schedule | None = None
    ) -> tuple[str, ...]:
        if obj is not None and obj.source == "code":
            return (*CODE_OWNED, *self.readonly_fields)
        return self.readonly_fields

    def save_model(self, request: HttpRequest, obj: models.Schedule, form: Any, change: bool) -> None:
        # The cursor restarts at the next tick after now when the timing changed or the schedule is
        # switched on again: a pause is not a backlog to catch up.
        if not change or {"cron", "timezone", "enabled"} & set(form.changed_data):
            obj.next_run_at = schedules.next_run_after(obj)
        super().save_model(request, obj, form, change)

    @admin.display(description="in words")
    def in_words(self, schedule: models.Schedule) -> str:
        return cron.describe(schedule.cron) if schedule.cron and not cron.cron_error(schedule.cron) else "-"

    @admin.display(description="next 5 runs")
    def next_runs(self, schedule: models.Schedule) -> str:
        if not schedule.pk or not schedule.enabled:
            return "-"
        now = store.database_now()
        start = max(schedule.next_run_at, now) if schedule.next_run_at else now
        ticks = itertools.islice(cron.ticks_from(schedule.cron, schedule.timezone, start), 5)
        zone = ZoneInfo(schedule.timezone)
        return format_html_join(
            "", "<div>{}</div>", ((f"{t.astimezone(zone):%Y-%m-%d %H:%M:%S %Z}",) for t in ticks)
        )

    @admin.display(description="last run")
    def last_run(self, schedule: models.Schedule) -> str:
        tick = schedule.ticks.order_by("-tick_at").first() if schedule.pk else None
        if tick is None:
            return "never"
        task = models.Task.objects.filter(id=tick.task_id or 0).only("id", "status").first()
        if task is None:
            return f"{tick.tick_at:%Y-%m-%d %H:%M:%S} UTC (task purged)"
        return format_html(
            '{} UTC{} <a href="{}">task {}</a> {}',
            f"{tick.tick_at:%Y-%m-%d %H:%M:%S}",
            " (run now)" if tick.manual else "",
            reverse("admin:queueapp_task_change", args=[task.id]),
            task.id,
            admin_views.status_badge(task.status),
        )

    @admin.action(description="Run now (enqueue the task once, at once)")
    def run_now(self, request: HttpRequest, queryset: QuerySet[models.Schedule]) -> None:
        for schedule in queryset:
            try:
                task_id = schedules.run_now(schedule)
            except InvalidTask as exc:
                self.message_user(request, f"{schedule.name}: not run: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{schedule.name}: enqueued task {task_id}.", messages.SUCCESS)

    @admin.action(description="Enable (from the next tick on)")
    def enable(self, request: HttpRequest, queryset: QuerySet[models.Schedule]) -> None:
        for schedule in queryset.filter(enabled=False):
            schedule.enabled = True
            schedule.next_run_at = schedules.next_run_after(schedule)
            schedule.save(update_fields=["enabled", "next_run_at"])
        self.message_user(request, "Enabled.", messages.SUCCESS)

    @admin.action(description="Disable")
    def disable(self, request: HttpRequest, queryset: QuerySet[models.Schedule]) -> None:
        count = queryset.update(enabled=False)
        self.message_user(request, f"Disabled {count} schedule(s).", messages.SUCCESS)
