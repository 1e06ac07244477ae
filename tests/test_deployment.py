"""docker-compose.yml and the Dockerfile, checked without Docker (none runs on this machine): every
command a service runs exists, and every variable the settings need is given."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import get_commands

from tests.helpers import shipped_web_command

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
APP_SERVICES = ["migrate", "web", "worker", "reaper"]
REQUIRED_SETTINGS = ["DATABASE_URL", "SECRET_KEY"]  # taskqueue_project/settings.py refuses to start without


def substitute(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with env standing in for the shell."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in env:
            return env[name]
        if op == ":-":
            return arg
        raise AssertionError(f"${{{name}}} has no default and is not set: {arg}")

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def commands(service: dict[str, Any]) -> list[list[str]]:
    """The command lines a service runs (the image's CMD unless it has its own), looking inside
    `sh -c` scripts."""
    command = service.get("command", shipped_web_command())
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(found) for found in re.findall(r"python manage\.py [\w-]+", command[2])]
    return [command]


def test_every_app_service_runs_a_command_that_exists() -> None:
    known = get_commands()
    for name in APP_SERVICES:
        for argv in commands(COMPOSE["services"][name]):
            if argv[0] == "gunicorn":
                app_module = argv[-1].split(":")[0]
                assert (ROOT / (app_module.replace(".", "/") + ".py")).exists(), f"{name}: {app_module}"
                assert "gunicorn" in (ROOT / "requirements.txt").read_text()
            else:
                assert argv[:2] == ["python", "manage.py"], f"{name}: {argv}"
                assert argv[2] in known, f"{name}: manage.py {argv[2]} does not exist"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_every_app_service_gets_the_settings_it_needs_and_they_load(service: str) -> None:
    environment = COMPOSE["services"][service]["environment"]
    for name in REQUIRED_SETTINGS:
        assert name in environment, f"{service} lacks {name}"
    resolved = {
        key: substitute(str(value), {"SECRET_KEY": "from-dotenv"}) for key, value in environment.items()
    }
    # The settings load with exactly this environment (and nothing of ours) and pass Django's checks.
    env = {"PATH": os.environ["PATH"], **resolved, "DJANGO_SETTINGS_MODULE": "taskqueue_project.settings"}
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_the_database_has_a_health_check_and_a_volume_and_the_app_waits_for_migrations() -> None:
    services = COMPOSE["services"]
    assert "healthcheck" in services["db"]
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in services["db"]["volumes"])
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("web", "worker", "reaper"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "ports" not in services["worker"], "a fixed host port would stop --scale worker=N"
    assert "container_name" not in services["worker"]


def test_the_secret_key_must_come_from_the_environment() -> None:
    with pytest.raises(AssertionError, match="SECRET_KEY"):
        substitute(COMPOSE["x-app"]["environment"]["SECRET_KEY"], {})


def test_the_dockerfile_copies_every_package_the_service_imports() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("taskqueue_project", "queueapp", "workers", "manage.py", "requirements.txt"):
        assert re.search(rf"^COPY .*\b{re.escape(package)}\b", dockerfile, re.MULTILINE), package


def test_the_image_holds_the_bytecode_of_what_it_copies_since_its_processes_may_not_write_it() -> None:
    """PYTHONDONTWRITEBYTECODE: without bytecode compiled at build, every process start compiled the
    project's modules again (60 ms of a worker's 0.5 s start, docs/benchmarks.md)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "PYTHONDONTWRITEBYTECODE=1" in dockerfile
    compiled = re.search(r"python -m compileall -q (.*?) \\$", dockerfile, re.MULTILINE)
    assert compiled, "no compileall step"
    assert set(compiled.group(1).split()) == {"manage.py", "taskqueue_project", "queueapp", "workers"}


def test_make_compiles_the_projects_bytecode_for_a_checkout_too() -> None:
    """`make run` and `make test` compile what the image compiles, so a worker started from a
    checkout where PYTHONDONTWRITEBYTECODE is set does not compile the project at every start."""
    module = ROOT / "queueapp" / "store" / "rows.py"
    compiled = Path(importlib.util.cache_from_source(str(module)))
    compiled.unlink(missing_ok=True)
    subprocess.run(["make", "-s", "bytecode"], cwd=ROOT, check=True, capture_output=True, timeout=120)
    assert compiled.stat().st_mtime >= module.stat().st_mtime
    makefile = (ROOT / "Makefile").read_text()
    dirs = re.search(r"-m compileall -q (.*)$", makefile, re.MULTILINE)
    assert dirs
    assert set(dirs.group(1).split()) == {"manage.py", "taskqueue_project", "queueapp", "workers"}
    for target in ("run", "test"):
        assert re.search(rf"^{target}:.*\bbytecode\b", makefile, re.MULTILINE), target


def test_the_web_runs_the_images_command_which_loads_the_shipped_gunicorn_settings() -> None:
    """One command for the web, the Dockerfile's CMD, which tests run as it is (tests.helpers.
    GunicornServer): compose must not carry a second copy that could drift from it."""
    assert "command" not in COMPOSE["services"]["web"]
    command = shipped_web_command()
    assert command[0] == "gunicorn"
    assert command[command.index("--config") + 1] == "python:taskqueue_project.gunicorn_conf"
    assert not {"-b", "--bind", "-w", "--workers", "-k", "--worker-class"} & set(command), (
        "settings belong in taskqueue_project/gunicorn_conf.py"
    )
    from taskqueue_project import gunicorn_conf

    assert gunicorn_conf.worker_class == "gthread"
    assert gunicorn_conf.bind == ["0.0.0.0:8000"]
    assert "8000:8000" in COMPOSE["services"]["web"]["ports"]
