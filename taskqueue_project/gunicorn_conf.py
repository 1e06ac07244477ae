"""gunicorn's settings for the web service. The Dockerfile's CMD (which compose's web service runs)
loads them: `gunicorn --config python:taskqueue_project.gunicorn_conf taskqueue_project.wsgi`. A flag
on the command line, or in GUNICORN_CMD_ARGS, overrides any of them (`--bind`, `--workers`, ...).

Threads, not sync workers: a sync worker belongs to one client until that client's request is read,
so three clients sending their bodies slowly left the API answering nothing. A gthread worker waits
for a request's first bytes without using a thread, and reads and runs each request in a thread of
its own, so a slow client ties up one thread, not the worker. The limits are in docs/operations.md.
"""

from __future__ import annotations

bind = ["0.0.0.0:8000"]
worker_class = "gthread"
workers = 2
"""Processes: each runs Python on one core at a time."""
threads = 32
"""Requests in progress per process, slow clients included. Threads start when needed; each that has
served a request keeps a database connection for CONN_MAX_AGE."""
timeout = 30
"""A process whose main loop is silent this long is killed and replaced (a thread busy with one
request does not count: the main loop keeps beating)."""
graceful_timeout = 30
"""On SIGTERM, requests in progress get this long to finish."""
keepalive = 5
"""Seconds an idle kept-alive connection stays open (in the main loop, not in a thread)."""
