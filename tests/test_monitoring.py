"""The monitoring profile of docker-compose.yml, checked without Docker (none runs here): Prometheus
scrapes the web and every worker, the Grafana dashboard and the alert rules query only series the
project exports (scraped from a real web and a real worker), and promtool accepts the files where
it is installed."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, WorkerProcess, wait_for
from tests.test_metrics import free_port, scrape

MONITORING = ROOT / "monitoring"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
RULES = yaml.safe_load((MONITORING / "alerts.yml").read_text())
DASHBOARD = json.loads((MONITORING / "grafana/dashboards/taskqueue.json").read_text())
PROMTOOL = shutil.which("promtool")
SERIES = re.compile(r"\b(taskqueue_[a-z_]+)\b")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


def series_of(text: str) -> set[str]:
    """Every series name a /metrics text exports, also for labelled families with no sample yet."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


@pytest.fixture
def exported(transactional_db: None, workers: Callable[..., WorkerProcess]) -> set[str]:
    web = Client().get("/metrics")
    assert web.status_code == 200
    port = free_port()
    worker = workers("--metrics-port", str(port))
    text = wait_for(lambda: _scrape_or_none(port), timeout=20, message="the worker's metrics port")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    return series_of(web.content.decode()) | series_of(text)


def _scrape_or_none(port: int) -> str | None:
    try:
        return scrape(port)
    except OSError:
        return None


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    titles = " | ".join(panel["title"] for panel in DASHBOARD["panels"]).lower()
    for subject in ("queue depth", "throughput", "fail", "pickup latency", "oldest ready", "live workers"):
        assert subject in titles, subject
    latency = " ".join(q for q in dashboard_queries() if "pickup_latency" in q)
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in latency
    assert len({panel["id"] for panel in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])


def test_every_series_the_dashboard_and_the_alerts_query_is_exported(exported: set[str]) -> None:
    queries = dashboard_queries() + [rule["expr"] for group in RULES["groups"] for rule in group["rules"]]
    assert queries
    for query in queries:
        for name in SERIES.findall(query):
            assert name in exported, f"{name} (in {query!r}) is not exported; exported: {sorted(exported)}"


def test_the_alert_rules_are_those_of_the_operations_guide() -> None:
    documented = set(re.findall(r"`(TaskQueue\w+)`", (ROOT / "docs/operations.md").read_text()))
    rules = {rule["alert"]: rule for group in RULES["groups"] for rule in group["rules"]}
    assert documented == set(rules)
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_prometheus_scrapes_the_web_and_every_worker_of_the_compose_file() -> None:
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    web = jobs["taskqueue-web"]
    assert web["metrics_path"] == "/metrics"
    assert web["static_configs"][0]["targets"] == ["web:8000"]
    assert "8000:8000" in COMPOSE["services"]["web"]["ports"]
    (discovery,) = jobs["taskqueue-workers"]["dns_sd_configs"]
    assert discovery["names"] == ["worker"]
    assert discovery["type"] == "A"
    command = COMPOSE["services"]["worker"]["command"]
    assert command[command.index("--metrics-port") + 1] == str(discovery["port"])
    assert PROMETHEUS["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_the_monitoring_profile_mounts_files_that_exist_and_stays_out_of_a_plain_up() -> None:
    services: dict[str, Any] = COMPOSE["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name]["volumes"]:
            source, _target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
    assert {v.split(":")[1] for v in services["prometheus"]["volumes"] if v.startswith("./")} == {
        "/etc/prometheus/prometheus.yml",
        "/etc/prometheus/alerts.yml",
    }
    assert all("profiles" not in services[name] for name in ("db", "migrate", "web", "worker", "reaper"))
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/taskqueue.yml").read_text())
    grafana_mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert grafana_mounts["./monitoring/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]
    uids = {t["datasource"]["uid"] for p in DASHBOARD["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_rules_and_the_configuration(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = subprocess.run(
        [PROMTOOL, "check", "rules", str(MONITORING / "alerts.yml")], capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    count = sum(len(group["rules"]) for group in RULES["groups"])
    assert f"SUCCESS: {count} rules found" in rules.stdout
    # The configuration names the rules where the container mounts them: point it here instead.
    config = tmp_path / "prometheus.yml"
    config.write_text(
        (MONITORING / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/alerts.yml", str(MONITORING / "alerts.yml"))
    )
    checked = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
