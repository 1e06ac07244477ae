"""The operations console in the Django admin: thin over store and backend; read-only rows,
permission-checked actions that report what they did and what they skipped."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.tasks import task_backends
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from queueapp import admin_views, apikeys, models, reads, registry, store
from queueapp.backend import PostgresBackend


class TaskActionForm(ActionForm):
    # No bounds here: Django would then drop the whole action with "No action selected"; the
    # action itself checks the range and says what is wrong.
    priority = forms.IntegerField(required=False, help_text="for “Set priority”, -100 to 100")


class TaskPathFilter(admin.SimpleListFilter):
    """Task names from the registry: no DISTINCT over a million rows to build the list."""

    title = "task"
    parameter_name = "task_path"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(path, path.rsplit(".", 1)[-1]) for path in registry.paths()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[models.Task]) -> QuerySet[models.Task]:
        return queryset.filter(task_path=self.value()) if self.value() else queryset


class QueueFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue_name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(queue, queue) for queue in sorted(task_backends["default"].queues)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[models.Task]) -> QuerySet[models.Task]:
        return queryset.filter(queue_name=self.value()) if self.value() else queryset


def _report(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, verb: str, done: int, skipped: dict[str, int]
) -> None:
    why = ", ".join(f"{n} {reason}" for reason, n in skipped.items() if n)
    level = messages.SUCCESS if done and not why else messages.WARNING
    model_admin.message_user(request, f"{verb} {done} task(s)" + (f"; skipped {why}" if why else "."), level)


def _each(
    queryset: QuerySet[models.Task], act: Callable[[models.Task], str | None]
) -> tuple[int, dict[str, int]]:
    done, skipped = 0, dict[str, int]()
    for task in queryset.only("id", "status", "task_path"):
        reason = act(task)
        if reason is None:
            done += 1
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    return done, skipped


def _backend() -> PostgresBackend:
    backend = task_backends["default"]
    assert isinstance(backend, PostgresBackend)
    return backend


@admin.register(models.Task)
class TaskAdmin(admin.ModelAdmin[models.Task]):
    list_display = (
        "id",
        "task_name",
        "queue_name",
        "coloured_status",
        "priority",
        "attempts_of",
        "enqueued_at",
        "started_at",
        "duration",
        "worker_link",
    )
    list_filter = ("status", QueueFilter, TaskPathFilter)
    search_fields = ("task_path",)
    search_help_text = "A task id, the start of a task's dotted path, or key:<unique key>"
    show_full_result_count = False
    paginator = admin_views.CappedCountPaginator
    list_per_page = 50
    ordering = ("-id",)
    action_form = TaskActionForm
    actions = ["retry_tasks", "cancel_tasks", "set_priority"]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "task_path",
                    "queue_name",
                    "coloured_status",
                    "priority",
                    "attempts_of",
                    "cancel_requested",
                    "unique_key",
                )
            },
        ),
        ("Times", {"fields": ("enqueued_at", "run_after", "started_at", "finished_at", "duration")}),
        ("Call", {"fields": ("pretty_args", "pretty_kwargs", "pretty_return_value", "worker_link")}),
        ("Errors, one per failed attempt", {"fields": ("attempt_errors",)}),
    )
    readonly_fields = tuple(str(name) for _, options in fieldsets for name in options["fields"])

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[models.Task], search_term: str
    ) -> tuple[QuerySet[models.Task], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.isdigit():
            return queryset.filter(id=int(term)), False
        if term.startswith("key:"):  # exact: task_live_unique_key and task_history_unique_key_idx
            return queryset.filter(unique_key=term.removeprefix("key:").strip()), False
        return queryset.filter(task_path__startswith=term), False  # task_path_id_idx, no full scan

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # rows are read-only; state changes go through the actions below

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("queueapp.retry_task")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("queueapp.cancel_task")

    def has_reprioritize_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("queueapp.reprioritize_task")

    @admin.action(
        description="Retry (FAILED or CANCELLED, with a fresh attempt budget)", permissions=["retry"]
    )
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[models.Task]) -> None:
        done, skipped = _each(
            queryset,
            lambda t: None if _backend().retry(str(t.id)) else f"not FAILED or CANCELLED ({t.status})",
        )
        _report(self, request, "Retried", done, skipped)

    @admin.action(description="Cancel (waiting at once, RUNNING by request)", permissions=["cancel"])
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[models.Task]) -> None:
        done, skipped = _each(
            queryset, lambda t: None if _backend().cancel(str(t.id)) else "already finished"
        )
        _report(self, request, "Cancelled", done, skipped)

    @admin.action(description="Set priority (waiting tasks) to the value above", permissions=["reprioritize"])
    def set_priority(self, request: HttpRequest, queryset: QuerySet[models.Task]) -> None:
        try:
            priority = TaskActionForm.base_fields["priority"].clean(request.POST.get("priority"))
        except forms.ValidationError:
            priority = None
        if priority is None or not -100 <= priority <= 100:
            self.message_user(request, "Give a priority from -100 to 100 next to the action.", messages.ERROR)
            return
        done, skipped = _each(
            queryset, lambda t: None if store.set_priority(t.id, priority) else "not SCHEDULED or READY"
        )
        _report(self, request, f"Set priority {priority} on", done, skipped)

    @admin.display(description="task")
    def task_name(self, task: models.Task) -> str:
        return task.task_path.rsplit(".", 1)[-1]

    @admin.display(description="status", ordering="status")
    def coloured_status(self, task: models.Task) -> str:
        return admin_views.status_badge(
            task.status + (" (cancel requested)" if task.cancel_requested else "")
        )

    @admin.display(description="attempts")
    def attempts_of(self, task: models.Task) -> str:
        return f"{task.attempts}/{task.max_attempts}"

    @admin.display(description="duration")
    def duration(self, task: models.Task) -> str:
        if not task.started_at:
            return "-"
        seconds = ((task.finished_at or timezone.now()) - task.started_at).total_seconds()
        return f"{seconds:.3f} s" + ("" if task.finished_at else " (running)")

    @admin.display(description="worker")
    def worker_link(self, task: models.Task) -> str:
        if task.worker_id is None:
            return "-"
        return format_html(
            '<a href="../../worker/{}/change/">{}</a>', task.worker_id, str(task.worker_id)[:8]
        )

    def _pre(self, value: Any) -> str:
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>", json.dumps(value, indent=2))

    @admin.display(description="args")
    def pretty_args(self, task: models.Task) -> str:
        return self._pre(task.args)

    @admin.display(description="kwargs")
    def pretty_kwargs(self, task: models.Task) -> str:
        return self._pre(task.kwargs)

    @admin.display(description="return value")
    def pretty_return_value(self, task: models.Task) -> str:
        return self._pre(task.return_value) if task.status == "SUCCESSFUL" else "-"

    @admin.display(description="errors")
    def attempt_errors(self, task: models.Task) -> str:
        if not task.errors:
            return "-"
        parts = [
            format_html(
                "<h4>Attempt {} · {}: {}</h4><pre style='white-space:pre-wrap'>{}</pre>",
                error.get("attempt", "?"),
                error.get("exception_class_path", ""),
                error.get("message", ""),
                error.get("traceback", ""),
            )
            for error in task.errors
        ]
        return mark_safe("".join(parts))  # noqa: S308  (each part was escaped by format_html)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.overview_view)
        return [path("overview/", view, name="queueapp_overview"), *super().get_urls()]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.overview(request, self.admin_site.each_context(request))


@admin.register(models.Worker)
class WorkerAdmin(admin.ModelAdmin[models.Worker]):
    list_display = (
        "short_id",
        "hostname",
        "pid",
        "health",
        "heartbeat_age",
        "running_tasks",
        "queues",
        "concurrency",
        "started_at",
    )
    list_filter = ("state",)
    ordering = ("-started_at",)
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[models.Worker]:
        return reads.workers_with_running_counts()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="id")
    def short_id(self, worker: models.Worker) -> str:
        return str(worker.id)[:8]

    @admin.display(description="state")
    def health(self, worker: models.Worker) -> str:
        state = reads.worker_health(worker, timezone.now())
        colour = {"alive": "SUCCESSFUL", "stale": "RUNNING", "lost": "FAILED"}.get(state, "CANCELLED")
        return format_html('<span style="color:{}">{}</span>', admin_views.STATUS_COLOURS[colour], state)

    @admin.display(description="heartbeat age")
    def heartbeat_age(self, worker: models.Worker) -> str:
        return f"{(timezone.now() - worker.last_heartbeat_at).total_seconds():.0f} s"

    @admin.display(description="running")
    def running_tasks(self, worker: models.Worker) -> int:
        return int(getattr(worker, "running", 0))


class ApiKeyForm(forms.ModelForm[models.ApiKey]):
    allowed_tasks = forms.CharField(
        required=False,
        help_text="Comma-separated task name patterns (e.g. send-*); empty: every exposed task",
    )

    class Meta:
        model = models.ApiKey
        fields = ["name"]


@admin.register(models.ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[models.ApiKey]):
    list_display = ("name", "prefix", "task_patterns", "created_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    form = ApiKeyForm
    actions = ["revoke"]
    readonly_fields = ("prefix", "created_at", "revoked_at")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: a revoked key stays on record

    def save_model(self, request: HttpRequest, obj: models.ApiKey, form: Any, change: bool) -> None:
        patterns = [p.strip() for p in form.cleaned_data.get("allowed_tasks", "").split(",") if p.strip()]
        row, key = apikeys.create_api_key(form.cleaned_data["name"], task_patterns=patterns)
        obj.pk, obj.prefix, obj.created_at = row.pk, row.prefix, row.created_at
        self.message_user(
            request, f"New API key (copy it now, it will not be shown again): {key}", messages.WARNING
        )

    @admin.action(description="Revoke", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[models.ApiKey]) -> None:
        revoked = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {revoked} key(s); requests with them now get 401.")


from queueapp import admin_schedules  # noqa: E402, F401  (registers the schedule pages)
