"""The console's admin site: Django's, with the Queue overview listed first among the queue's pages
on the admin index and in the sidebar (settings.INSTALLED_APPS names ConsoleAdminConfig)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest
from django.urls import reverse


class ConsoleSite(admin.AdminSite):
    site_header = "taskqueue console"
    site_title = "taskqueue"

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[Any]:
        apps = super().get_app_list(request, app_label)
        for app in apps:
            if app["app_label"] == "queueapp" and request.user.has_perm("queueapp.view_task"):
                app["models"].insert(0, overview_entry())
        return apps


def overview_entry() -> dict[str, Any]:
    """The overview as app_list.html shows a model: a name and a link, nothing to add."""
    return {
        "name": "Queue overview",
        "object_name": "QueueOverview",
        "admin_url": reverse("admin:queueapp_overview"),
        "add_url": None,
        "view_only": True,
        "perms": {"view": True},
    }


class ConsoleAdminConfig(AdminConfig):
    default_site = "queueapp.admin_site.ConsoleSite"
