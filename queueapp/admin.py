"""The operations console in the Django admin: thin over store and backend; read-only rows,
permission-checked actions that report what they did and what they skipped."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.tasks import task_backends
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe

from queueapp import admin_views, apikeys, conf, models, reads, registry, store
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


class WorkerFilter(admin.SimpleListFilter):
    """The tasks a worker ran (any attempt), from its page's link; shown only while in use. Bounded
    below by the worker's start, so only the history partitions since then are read."""

    title = "worker"
    parameter_name = "worker"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, value[:8])] if value else []

    def queryset(self, request: HttpRequest, queryset: QuerySet[models.Task]) -> QuerySet[models.Task]:
        if not self.value():
            return queryset
        worker_id = _uuid_or_none(self.value())
        worker = models.Worker.objects.filter(id=worker_id).first() if worker_id else None
        if worker is None:
            raise IncorrectLookupParameters(f"no worker {self.value()}")
        return queryset.filter(worker_ids__contains=[worker.id]).filter(
            Q(finished_at__isnull=True) | Q(finished_at__gte=worker.started_at)
        )


def _uuid_or_none(text: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(text))
    except ValueError:
        return None


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
        "queue",
        "coloured_status",
        "attempts_of",
        "enqueued",
        "duration",
        "worker_link",
    )
    list_filter = ("status", QueueFilter, TaskPathFilter, WorkerFilter)
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
        ("Why isn't it running?", {"fields": ("waiting_on",)}),
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
        # A waiting task is cancelled at once; only a RUNNING one can have a request still pending.
        pending = task.cancel_requested and task.status == models.TaskStatus.RUNNING
        return admin_views.status_badge(task.status + (" (cancel requested)" if pending else ""))

    # Started and priority are left out of the list (the duration says whether and how long it ran;
    # the task's page has every time and its priority): with the sidebar open at 1,400 px every
    # column then fits.
    @admin.display(description="queue")
    def queue(self, task: models.Task) -> str:
        return task.queue_name

    @admin.display(description="enqueued")
    def enqueued(self, task: models.Task) -> str:
        return date_format(timezone.localtime(task.enqueued_at), "m-d H:i:s T")

    @admin.display(description="attempts")
    def attempts_of(self, task: models.Task) -> str:
        return f"{task.attempts}/{task.max_attempts}"

    @admin.display(description="duration")
    def duration(self, task: models.Task) -> str:
        if not task.started_at:
            return "-"
        seconds = ((task.finished_at or timezone.now()) - task.started_at).total_seconds()
        return f"{seconds:.3f} s"  # still growing while the status says RUNNING

    @admin.display(description="worker")
    def worker_link(self, task: models.Task) -> str:
        if task.worker_id is None:
            return "-"
        url = reverse("admin:queueapp_worker_change", args=[task.worker_id])
        return format_html('<a href="{}">{}</a>', url, str(task.worker_id)[:8])

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
        return self._pre(task.return_value) if task.status == models.TaskStatus.SUCCESSFUL else "-"

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

    @admin.display(description="held by")
    def waiting_on(self, task: models.Task) -> str:
        holds = store.why_waiting(task.id, stale_after=conf.get().stale_after)
        if holds is None:
            return "not waiting (running or finished)"
        if not holds:
            return "nothing: a worker should take it at once"
        each = ((hold.code, hold.message) for hold in holds)
        return format_html_join(mark_safe("<br>"), '<span data-hold="{}">{}</span>', each)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.overview_view)
        return [path("overview/", view, name="queueapp_overview"), *super().get_urls()]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.overview(request, self.admin_site.each_context(request))


RUNNING_SHOWN = 100


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
    fields = (
        "id",
        "hostname",
        "pid",
        "health",
        "queues",
        "concurrency",
        "started_at",
        "last_heartbeat_at",
        "stopped_at",
        "running_now",
        "ran",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[models.Worker]:
        return reads.workers_with_running_counts()

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {"housekeeper": reads.housekeeper(store.database_now()), **(extra_context or {})}
        return super().changelist_view(request, context)

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
        colour = {
            "alive": models.TaskStatus.SUCCESSFUL,
            "stale": models.TaskStatus.RUNNING,
            "lost": models.TaskStatus.FAILED,
        }.get(state, models.TaskStatus.CANCELLED)
        return format_html('<span style="color:{}">{}</span>', admin_views.STATUS_COLOURS[colour], state)

    @admin.display(description="heartbeat age")
    def heartbeat_age(self, worker: models.Worker) -> str:
        return f"{(timezone.now() - worker.last_heartbeat_at).total_seconds():.0f} s"

    @admin.display(description="running")
    def running_tasks(self, worker: models.Worker) -> int:
        return int(getattr(worker, "running", 0))

    @admin.display(description="running now")
    def running_now(self, worker: models.Worker) -> str:
        running = reads.running_tasks(worker.id, limit=RUNNING_SHOWN)
        if not running:
            return "-"
        return format_html_join(
            mark_safe("<br>"),
            '<a href="{}">#{} {}</a> (attempt {}, since {})',
            (
                (
                    reverse("admin:queueapp_task_change", args=[task.id]),
                    task.id,
                    task.task_path.rsplit(".", 1)[-1],
                    task.attempts,
                    date_format(timezone.localtime(task.started_at), "DATETIME_FORMAT")
                    if task.started_at
                    else "-",
                )
                for task in running
            ),
        )

    @admin.display(description="tasks it ran")
    def ran(self, worker: models.Worker) -> str:
        url = reverse("admin:queueapp_task_changelist") + "?" + urlencode({"worker": str(worker.id)})
        return format_html('<a href="{}">every task this worker started an attempt of →</a>', url)


class ApiKeyForm(forms.ModelForm[models.ApiKey]):
    allowed_tasks = forms.CharField(
        required=False,
        help_text="Comma-separated task name patterns (e.g. send-*); empty: every exposed task",
    )

    class Meta:
        model = models.ApiKey
        fields = ["name"]


@admin.register(models.QueueControl)
class QueueControlAdmin(admin.ModelAdmin[models.QueueControl]):
    """The Queues page: every queue's figures and pause button above, the editable settings below.
    Rows are not deleted (a queue with keyed tasks needs its row): clear a limit to lift it."""

    list_display = (
        "name",
        "paused",
        "concurrency_limit",
        "key_concurrency",
        "rate_limit",
        "rate_period",
        "breaker_threshold",
        "breaker_state",
    )
    list_editable = ("paused",)
    fieldsets = (
        (None, {"fields": ("name", "paused", "concurrency_limit", "key_concurrency")}),
        ("Rate limit", {"fields": ("rate_limit", "rate_period")}),
        ("Rate limit per concurrency key", {"fields": ("key_rate_limit", "key_rate_period")}),
        (
            "Circuit breaker (off while the threshold is empty)",
            {
                "fields": (
                    "breaker_threshold",
                    "breaker_min_attempts",
                    "breaker_window",
                    "breaker_cooloff",
                    "breaker_state",
                    "breaker_until",
                )
            },
        ),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        state = ("breaker_state", "breaker_until")
        return ("name", *state) if obj is not None else state

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: models.QueueControl, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        store.notify_settings(obj.name)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {
            "queue_flow": store.queue_flow(),
            "can_pause": self.has_change_permission(request),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.pause_view)
        return [path("<path:name>/pause/", view, name="queueapp_queue_pause"), *super().get_urls()]

    def pause_view(self, request: HttpRequest, name: str) -> HttpResponse:
        if request.method != "POST" or not self.has_change_permission(request):
            raise PermissionDenied
        paused = request.POST.get("paused") == "1"
        store.set_paused(name, paused)
        self.message_user(request, f"{'Paused' if paused else 'Resumed'} queue {name}.", messages.SUCCESS)
        return redirect("admin:queueapp_queuecontrol_changelist")


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
