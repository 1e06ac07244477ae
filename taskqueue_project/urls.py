"""URL routes of the taskqueue service."""

from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, URLResolver, path

from queueapp import metrics
from queueapp.api import api
from taskqueue_project import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("metrics", metrics.metrics_view, name="metrics"),
]
