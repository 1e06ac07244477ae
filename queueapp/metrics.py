"""`/metrics` on the web service: what the database knows, read at scrape time.

Counters that only worker processes know (tasks finished, durations, pickup latency, retries, reaped
tasks) are served by the workers themselves: `runworker --metrics-port` (docs/operations.md).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from queueapp import conf, models, reads, store
from queueapp.states import BreakerState


class QueueCollector(Collector):
    """Queue depth, oldest READY age and workers, straight from PostgreSQL."""

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(
            "taskqueue_tasks",
            "Live tasks by queue and status (SCHEDULED, READY, RUNNING)",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            "taskqueue_oldest_ready_age_seconds", "Wait of the oldest due READY task", labels=["queue"]
        )
        unstaged = GaugeMetricFamily(
            "taskqueue_oldest_unstaged_age_seconds",
            "How long the oldest due task of the queue has been left SCHEDULED (0 while it is staged)",
            labels=["queue"],
        )
        for queue, entry in store.queue_overview().items():
            for status in models.LIVE_STATUSES:
                tasks.add_metric([queue, status], entry["counts"].get(status, 0))
            oldest.add_metric([queue], entry["oldest_ready_seconds"] or 0.0)
            unstaged.add_metric([queue], entry["oldest_unstaged_seconds"] or 0.0)
        workers = GaugeMetricFamily(
            "taskqueue_workers", "Workers by state (alive, stale, stopping)", labels=["state"]
        )
        now = timezone.now()
        states: dict[str, int] = {"alive": 0, "stale": 0, "stopping": 0}
        for worker in reads.list_workers():
            state = reads.worker_health(worker, now)
            if state in states:
                states[state] += 1
        for state, count in states.items():
            workers.add_metric([state], count)
        overdue = GaugeMetricFamily(
            "taskqueue_schedule_overdue_seconds",
            "How far behind its next tick each enabled schedule is (0 while schedulers keep up)",
            labels=["schedule"],
        )
        for name, next_run_at in reads.schedule_cursors():
            overdue.add_metric([name], max(0.0, (now - next_run_at).total_seconds()))
        yield from (tasks, oldest, unstaged, workers, overdue)


class FlowCollector(Collector):
    """Flow control per queue: paused, limits, and tasks started in the last minute."""

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"taskqueue_queue_{name}", text, labels=["queue"])

        families = {
            "paused": gauge("paused", "1 when the queue is paused"),
            "concurrency_limit": gauge("concurrency_limit", "Fleet-wide RUNNING limit (absent: none)"),
            "rate_limit": gauge("rate_limit_per_second", "Starts allowed per second (absent: none)"),
            "key_rate_limit": gauge(
                "key_rate_limit_per_second",
                "Starts allowed per second for each concurrency key (absent: none)",
            ),
            "started": gauge("started_last_minute", "Tasks started in the last minute"),
            "breaker": gauge("breaker_open", "1 when the circuit breaker is open, 0.5 half-open, 0 closed"),
        }
        for queue in store.queue_flow():
            families["paused"].add_metric([queue.name], int(queue.paused))
            if queue.concurrency_limit is not None:
                families["concurrency_limit"].add_metric([queue.name], queue.concurrency_limit)
            if queue.rate_limit is not None:
                families["rate_limit"].add_metric([queue.name], queue.rate_limit / queue.rate_period)
            if queue.key_rate_limit is not None:
                families["key_rate_limit"].add_metric(
                    [queue.name], queue.key_rate_limit / queue.key_rate_period
                )
            families["started"].add_metric([queue.name], queue.started_last_minute)
            if queue.breaker_threshold is not None:
                openness = _OPENNESS.get(BreakerState(queue.breaker_state), 0.0)
                families["breaker"].add_metric([queue.name], openness)
        yield from families.values()


_OPENNESS = {BreakerState.OPEN: 1.0, BreakerState.HALF_OPEN: 0.5}
"""The breaker gauge: closed is 0."""


def metrics_view(request: HttpRequest) -> HttpResponse:
    token = conf.get().metrics_token
    if token and not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {token}"):
        return HttpResponse("metrics need `Authorization: Bearer <TASKQUEUE_METRICS_TOKEN>`\n", status=401)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector())
    registry.register(FlowCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
