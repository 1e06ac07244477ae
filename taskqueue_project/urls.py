"""URL routes of the taskqueue service."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import URLPattern, URLResolver, path

from queueapp import metrics
from queueapp.api import api

urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("metrics", metrics.metrics_view, name="metrics"),
]

if settings.DEBUG:
    # `make run` serves the admin's CSS itself; production serves STATIC_ROOT (docs/operations.md).
    urlpatterns += staticfiles_urlpatterns()
