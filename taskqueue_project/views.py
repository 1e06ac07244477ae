"""The service's own pages: a landing page at / and the probes orchestrators call (no API key)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from queueapp import health


def home(request: HttpRequest) -> HttpResponse:
    """What this is, and where to look: the console, the overview, the API docs, the metrics."""
    return render(request, "queueapp/home.html")


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches nothing else, so a database outage does not get
    every web process restarted."""
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when the database answers and migrations are applied, else 503 with why."""
    ready = health.readiness()
    if ready.reasons:
        return JsonResponse({"status": "unavailable", "reasons": ready.reasons}, status=503)
    return JsonResponse({"status": "ok", "reasons": []})
