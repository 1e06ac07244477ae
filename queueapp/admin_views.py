"""The console's pieces that are not plain ModelAdmin: a paginator that never counts a million
rows, the coloured status, and the overview page with its charts (server-drawn SVG, no CDN)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from queueapp import models, reads, store
from queueapp.states import TaskStatus

COUNT_CAP = 10_000

STATUS_COLOURS: dict[str, str] = {
    TaskStatus.SCHEDULED: "#7c3aed",
    TaskStatus.READY: "#2563eb",
    TaskStatus.RUNNING: "#d97706",
    TaskStatus.SUCCESSFUL: "#16a34a",
    TaskStatus.FAILED: "#dc2626",
    TaskStatus.CANCELLED: "#6b7280",
}


def status_badge(status: str) -> str:
    return format_html(
        '<span style="color:#fff;background:{};padding:1px 5px;border-radius:3px;white-space:nowrap;'
        'font-size:11px">'
        "{}</span>",
        STATUS_COLOURS.get(status, "#000"),
        status,
    )


class CappedCountPaginator(Paginator[Any]):
    """COUNT(*) over a million rows is the admin's usual slow page: an unfiltered list uses the
    planner's estimate, a filtered one counts at most COUNT_CAP rows (pages beyond: use filters)."""

    @cached_property
    def count(self) -> int:
        query: QuerySet[Any] = self.object_list  # type: ignore[assignment]
        if not query.query.where and query.model is models.Task:
            estimate = store.estimated_tasks()
            if estimate > COUNT_CAP:
                return estimate
        return query.order_by()[: COUNT_CAP + 1].count()


CHART = {"left": 52, "width": 600, "right": 12, "bottom": 30, "tick_minutes": 10}


def svg_bars(series: list[tuple[str, float]], *, colour: str, height: int = 80, unit: str = "") -> str:
    """A bar chart of ("HH:MM", value) per minute as inline SVG, with a time axis labelled every ten
    minutes (UTC) and the top of the value axis; every label and value is escaped."""
    left, width = CHART["left"], CHART["width"]
    bar = width / max(len(series), 1)
    top = max((value for _, value in series), default=0) or 1
    rects = [
        format_html(
            '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} {}{}</title></rect>',
            round(left + i * bar, 1),
            round(height - value / top * height, 1),
            round(max(bar - 1, 1), 1),
            round(value / top * height, 1),
            colour,
            label,
            round(value, 3),
            unit,
        )
        for i, (label, value) in enumerate(series)
    ]
    ticks = [
        format_html(
            '<line x1="{x}" y1="{y}" x2="{x}" y2="{y4}" stroke="#64748b"/>'
            '<text x="{x}" y="{ty}" font-size="10" text-anchor="middle" class="tick">{}</text>',
            label,
            x=round(left + (i + 0.5) * bar, 1),
            y=height,
            y4=height + 4,
            ty=height + 14,
        )
        for i, (label, _) in enumerate(series)
        if int(label[-2:]) % CHART["tick_minutes"] == 0
    ]
    return format_html(
        '<svg width="{}" height="{}" role="img" style="background:#f8fafc">{}'
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#64748b"/>{}'
        '<text x="{}" y="10" font-size="10" text-anchor="end" class="value-max">{}{}</text>'
        '<text x="{}" y="{}" font-size="10" text-anchor="end">0</text>'
        '<text x="{}" y="{}" font-size="10" text-anchor="end" class="axis-title">{}</text>'
        "</svg>",
        left + width + CHART["right"],
        height + CHART["bottom"],
        mark_safe("".join(rects)),  # noqa: S308  (each rect was built by format_html)
        left,
        height,
        left + width,
        height,
        mark_safe("".join(ticks)),  # noqa: S308  (each tick was built by format_html)
        left - 4,
        round(top, 3),
        unit,
        left - 4,
        height,
        left + width,
        height + 28,
        "time (UTC), per minute",
    )


def minute_series(rows: list[tuple[dt.datetime, float]], now: dt.datetime) -> list[tuple[str, float]]:
    """One point per minute over the last hour, zero where nothing happened."""
    by_minute = {minute.replace(second=0, microsecond=0): value for minute, value in rows}
    start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=59)
    return [
        (
            (start + dt.timedelta(minutes=i)).strftime("%H:%M"),
            float(by_minute.get(start + dt.timedelta(minutes=i), 0)),
        )
        for i in range(60)
    ]


def queues_with_last_hour(now: dt.datetime) -> dict[str, dict[str, Any]]:
    """Per queue: live tasks by status, the oldest READY's wait, and tasks finished in the last hour."""
    queues = store.queue_overview()
    for queue, finished in store.finished_by_queue(since=now - dt.timedelta(hours=1)).items():
        queues.setdefault(queue, {"counts": {}, "oldest_ready_seconds": None})["finished"] = finished
    return dict(sorted(queues.items()))


def overview(request: HttpRequest, admin_context: dict[str, Any]) -> HttpResponse:
    now = store.database_now()
    per_minute = store.finished_per_minute(since=now - dt.timedelta(hours=1))
    done = minute_series([(m, ok) for m, ok, _, _, _ in per_minute], now)
    failed = minute_series([(m, bad) for m, _, bad, _, _ in per_minute], now)
    p50 = minute_series([(m, lat or 0) for m, _, _, lat, _ in per_minute], now)
    p95 = minute_series([(m, lat or 0) for m, _, _, _, lat in per_minute], now)
    workers = [
        w for w in reads.list_workers() if reads.worker_health(w, now) in ("alive", "stale", "stopping")
    ]
    context = {
        **admin_context,
        "title": "Queue overview",
        "now": now,
        "queues": queues_with_last_hour(now),
        "latency": reads.pickup_latency(now),
        "charts": [
            (
                "Finished successfully per minute",
                svg_bars(done, colour=STATUS_COLOURS[TaskStatus.SUCCESSFUL]),
            ),
            ("Failed for good per minute", svg_bars(failed, colour=STATUS_COLOURS[TaskStatus.FAILED])),
            (
                "Pickup latency p50 per minute",
                svg_bars(p50, colour=STATUS_COLOURS[TaskStatus.READY], unit=" s"),
            ),
            (
                "Pickup latency p95 per minute",
                svg_bars(p95, colour=STATUS_COLOURS[TaskStatus.RUNNING], unit=" s"),
            ),
        ],
        "workers": [
            (w, reads.worker_health(w, now), (now - w.last_heartbeat_at).total_seconds()) for w in workers
        ],
        "refresh_seconds": 10,
    }
    return TemplateResponse(request, "admin/queueapp/overview.html", context)
