"""Settings for the taskqueue service, read from the environment (django-environ).

Defaults are production-safe: DEBUG is off and SECRET_KEY must be given unless DEBUG is on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import django_stubs_ext
import environ

from queueapp import database_urls

# Lets typed code subscript Django's generic classes (ModelAdmin[Task]) at run time too.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)
if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="insecure-development-key-do-not-use-in-production")
else:
    SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "queueapp.admin_site.ConsoleAdminConfig",  # django.contrib.admin with the console's site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "queueapp",
]
# django-ninja's Swagger UI (template and static files) is served from here, never from a CDN, but
# "ninja" is not an installed app: every app is imported at start-up, and ninja's import (pydantic
# and all) was a sixth of a worker's start, for pages a worker never serves (queueapp.api_support.Docs).
NINJA_ASSETS = Path(importlib.util.find_spec("ninja").origin or "").parent  # type: ignore[union-attr]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "queueapp.api_support.BodyLimits",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "taskqueue_project.urls"
WSGI_APPLICATION = "taskqueue_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [NINJA_ASSETS / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# DATABASE_URL is required: postgres://user:password@host:port/name, or several hosts for a
# standby set-up: postgres://user@primary:5432,standby:5432/name?target_session_attrs=read-write
DATABASES = {"default": database_urls.parse(env.str("DATABASE_URL"))}
# Persistent connections: a new PostgreSQL connection per request would cost more than the request.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = True
FORMAT_MODULE_PATH = ["taskqueue_project.formats"]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "static"
STATICFILES_DIRS = [NINJA_ASSETS / "static"]
# gunicorn serves the admin's CSS and JS itself (WhiteNoise): from STATIC_ROOT after collectstatic
# in production, straight from the apps under DEBUG (make run).
WHITENOISE_USE_FINDERS = DEBUG

# django.tasks: every task goes through PostgresBackend.
TASKS = {
    "default": {
        "BACKEND": "queueapp.backend.PostgresBackend",
        "QUEUES": env.list("TASKQUEUE_QUEUES", default=["default"]),
        "OPTIONS": {
            # Attempts a task gets unless @task(max_attempts=...) says otherwise.
            "max_attempts": env.int("TASKQUEUE_MAX_ATTEMPTS", default=3),
            # Retry n waits about backoff_base * 2**(n-1) seconds (with jitter), at most backoff_max.
            "backoff_base": env.float("TASKQUEUE_BACKOFF_BASE", default=2.0),
            "backoff_max": env.float("TASKQUEUE_BACKOFF_MAX", default=3600.0),
        },
    }
}

# The worker runtime and the queue's own limits (docs/configuration.md).
TASKQUEUE = {
    # Modules imported at start-up so their tasks can be resolved by path (besides each app's tasks.py).
    "IMPORTS": env.list("TASKQUEUE_IMPORTS", default=["taskqueue_project.demo_tasks"]),
    # Largest JSON encoding of args plus kwargs accepted, in bytes.
    "MAX_ARGS_BYTES": env.int("TASKQUEUE_MAX_ARGS_BYTES", default=1_048_576),
    # Largest JSON encoding of a task's return value stored; a larger one fails the attempt.
    "MAX_RETURN_BYTES": env.int("TASKQUEUE_MAX_RETURN_BYTES", default=1_048_576),
    # A direct (not PgBouncer) URL for LISTEN, read like DATABASE_URL; DATABASE_URL when unset.
    "LISTEN_DATABASE_URL": env.str("TASKQUEUE_LISTEN_DATABASE_URL", default=""),
    "HEARTBEAT_INTERVAL": env.float("TASKQUEUE_HEARTBEAT_INTERVAL", default=5.0),
    # REST API: largest request body, and back pressure (READY tasks per queue before 429).
    "API_MAX_BODY_BYTES": env.int("TASKQUEUE_API_MAX_BODY_BYTES", default=1_048_576),
    "MAX_READY_PER_QUEUE": env.int("TASKQUEUE_MAX_READY_PER_QUEUE", default=None),
    "QUEUE_LIMITS": {
        name: int(limit) for name, limit in env.dict("TASKQUEUE_QUEUE_LIMITS", default={}).items()
    },
    "API_RETRY_AFTER": env.int("TASKQUEUE_API_RETRY_AFTER", default=5),
    # Flow control to seed with `manage.py queues seed` (rows the admin made are left alone), e.g.
    # {"emails": {"rate_limit": 10, "rate_period": 1.0}, "payments": {"concurrency_limit": 5}}.
    "FLOW_CONTROL": {},
    # When set, /metrics wants `Authorization: Bearer <token>`.
    "METRICS_TOKEN": env.str("TASKQUEUE_METRICS_TOKEN", default=""),
    "STALE_AFTER": env.float("TASKQUEUE_STALE_AFTER", default=30.0),
    # /api/health says "degraded" when a due READY task has waited longer than this many seconds.
    "HEALTH_MAX_READY_AGE": env.float("TASKQUEUE_HEALTH_MAX_READY_AGE", default=300.0),
    # Seconds between the stager's runs in each worker: a deferred task or a retry becomes READY at
    # most about this long after it is due.
    "STAGE_INTERVAL": env.float("TASKQUEUE_STAGE_INTERVAL", default=1.0),
    # Periodic tasks (docs/scheduling.md): each worker's scheduler looks for due ticks this often; a
    # tick later than SCHEDULE_GRACE seconds is missed and its schedule's catch_up decides.
    "SCHEDULE_INTERVAL": env.float("TASKQUEUE_SCHEDULE_INTERVAL", default=1.0),
    "SCHEDULE_GRACE": env.float("TASKQUEUE_SCHEDULE_GRACE", default=10.0),
    # Schedules declared here: {name: {"task": dotted path, "cron": "*/5 * * * *", ...}}.
    "SCHEDULE": {},
    # Enqueues and the worker's rounds run as server-side prepared statements (parsed and planned
    # once per connection): on, off, or auto (off, with a WARNING, behind a connection pooler).
    "PREPARED_STATEMENTS": env.str("TASKQUEUE_PREPARED_STATEMENTS", default="auto"),
    # Enqueues notify workers that wait on their queue; off: nothing notifies, workers only poll.
    "NOTIFY": env.bool("TASKQUEUE_NOTIFY", default=True),
}

# The API's body limit applies to every request Django reads.
DATA_UPLOAD_MAX_MEMORY_SIZE = TASKQUEUE["API_MAX_BODY_BYTES"]

LOGGING: dict[str, object] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "taskqueue_project.logformat.JsonFormatter"},
    },
    # LOG_FORMAT=json for one JSON object per line (log shippers); plain key=value text otherwise.
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": env.str("LOG_FORMAT", default="plain")}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django": {"level": env.str("LOG_LEVEL", default="INFO")},
        # django.tasks' own receivers log every start and finish; the worker's task_finished lines
        # say more (attempt, duration, outcome), so keep only its warnings and failures.
        "django.tasks": {"level": "WARNING"},
    },
}
