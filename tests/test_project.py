"""The project's own plumbing: system checks, the SQL loader, migrations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from queueapp.sql import QUERIES, load
from tests.helpers import database_url

ROOT = Path(__file__).resolve().parent.parent


def test_check_fails_clearly_when_the_database_is_not_postgresql(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "SECRET_KEY": "x",
        "DJANGO_SETTINGS_MODULE": "taskqueue_project.settings",
    }
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "queueapp.E001" in proc.stderr
    assert "taskqueue needs PostgreSQL, but the default database is 'sqlite'" in proc.stderr


def test_settings_refuse_to_start_without_a_secret_key_unless_debug() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    env["DJANGO_SETTINGS_MODULE"] = "taskqueue_project.settings"
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "SECRET_KEY" in proc.stderr


def test_every_query_is_named_once_and_store_uses_only_known_names() -> None:
    assert {
        "enqueue_task",
        "copy_tasks",
        "claim_tasks",
        "finish_tasks",
        "fail_task",
        "cancel_task",
        "get_task",
    } <= set(QUERIES)
    with pytest.raises(ValueError, match="defined twice"):
        load("-- a --\nSELECT 1;\n-- a --\nSELECT 2;")
    store_source = "".join(path.read_text() for path in (ROOT / "queueapp" / "store").glob("*.py"))
    for name in QUERIES:
        assert f'QUERIES["{name}"]' in store_source, f"query {name} is never used"


@pytest.mark.django_db
def test_the_sequence_bulk_enqueue_draws_ids_from_is_the_id_columns() -> None:
    from django.db import connection

    assert "nextval('queueapp_task_id_seq')" in QUERIES["reserve_task_ids"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence('queueapp_task_live', 'id')")
        assert cursor.fetchone() == ("public.queueapp_task_id_seq",)


def test_dev_database_names_what_to_install_when_no_server_binaries_are_found(tmp_path: Path) -> None:
    from taskqueue_project import devdb

    with pytest.raises(SystemExit, match=r"No PostgreSQL server binaries found.*apt-get install postgresql"):
        devdb.find_bindir(search_path=str(tmp_path), pattern=str(tmp_path / "*" / "initdb"))
    assert (devdb.find_bindir() / "pg_ctl").exists()


def test_log_format_json_gives_one_object_per_line_with_the_fields(tmp_path: Path) -> None:
    import json

    from tests.helpers import FAST_ENV

    env = {
        **os.environ,
        **FAST_ENV,
        "LOG_FORMAT": "json",
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); import logging; logging.getLogger('workers.executor')"
            ".info('task_finished id=%s task=%s outcome=%s', 7, 'a.b', 'SUCCESSFUL')",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = json.loads(proc.stderr.strip().splitlines()[-1])
    assert (line["event"], line["id"], line["task"], line["outcome"]) == (
        "task_finished",
        "7",
        "a.b",
        "SUCCESSFUL",
    )
    assert line["level"] == "INFO"


def test_runworker_refuses_a_bad_queue_setting(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SECRET_KEY": "x",
        "DJANGO_SETTINGS_MODULE": "taskqueue_project.settings",
        "TASKQUEUE_PREPARED_STATEMENTS": "sometimes",
    }
    refused = subprocess.run(
        [sys.executable, "manage.py", "runworker", "--burst"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "queueapp.E006" in refused.stderr


@pytest.mark.django_db(transaction=True)
def test_a_worker_loads_no_web_code() -> None:
    """runworker runs the queue's checks (checks.WORKER_TAGS), not the web's, and ninja is not an
    installed app: the URLconf, the API and pydantic were a quarter of a worker's start."""
    env = {**os.environ, "SECRET_KEY": "x", "DATABASE_URL": database_url()}
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "manage.py", "runworker", "--burst"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "burst_done" in proc.stderr, proc.stderr[-2000:]
    imported = {
        line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if "import time:" in line
    }
    assert "django.db.models" in imported  # what importtime reports is seen
    assert imported.isdisjoint({"ninja", "pydantic", "queueapp.api", "taskqueue_project.urls"})
