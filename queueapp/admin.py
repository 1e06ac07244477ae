"""Operations console in the Django admin: browse tasks and workers."""

from __future__ import annotations

from django.contrib import admin

from queueapp import models


@admin.register(models.Task)
class TaskAdmin(admin.ModelAdmin[models.Task]):
    list_display = (
        "id",
        "task_path",
        "queue_name",
        "status",
        "priority",
        "attempts",
        "max_attempts",
        "enqueued_at",
        "started_at",
        "finished_at",
        "worker",
    )
    list_filter = ("status", "queue_name")
    search_fields = ("=id", "task_path")
    show_full_result_count = False
    ordering = ("-id",)

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(models.Worker)
class WorkerAdmin(admin.ModelAdmin[models.Worker]):
    list_display = (
        "id",
        "hostname",
        "pid",
        "state",
        "queues",
        "concurrency",
        "started_at",
        "last_heartbeat_at",
    )
    list_filter = ("state",)

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
