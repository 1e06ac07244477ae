"""URL routes of the taskqueue service."""

from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, URLResolver, path

from queueapp import metrics
from queueapp.api import api

urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("metrics", metrics.metrics_view, name="metrics"),
]
