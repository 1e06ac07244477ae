"""DATABASE_URL and TASKQUEUE_LISTEN_DATABASE_URL read as libpq reads them.

A standby set-up names every server in one URL, libpq's way to fail over:
`postgres://user@primary:5432,standby:5433/db?target_session_attrs=read-write` (each connection
tries the hosts in turn and keeps the first that accepts writes). django-environ splits URLs with
urllib, which keeps one port for all the hosts (`h1:5433,h2` puts h2 on 5433 too) and IPv6
brackets in the host; libpq's own parser gets every case right, so postgres:// and postgresql://
URLs go through it, and anything else to django-environ as before.
"""

from __future__ import annotations

from typing import Any

import environ
import psycopg
from django.core.exceptions import ImproperlyConfigured


def parse(url: str) -> dict[str, Any]:
    """Django's DATABASES entry for url: hosts and ports as libpq lists, every other libpq
    parameter of the URL (target_session_attrs, sslmode, connect_timeout ...) in OPTIONS."""
    if not url.startswith(("postgres://", "postgresql://")):
        return dict(environ.Env.db_url_config(url))
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ImproperlyConfigured(f"not a PostgreSQL URL libpq accepts: {exc}") from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", ""),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,
    }


def conninfo(database: dict[str, Any], **extra: Any) -> str:
    """A libpq connection string for a DATABASES entry, for connections Django does not make; only
    OPTIONS libpq knows are kept (Django's own, such as isolation_level, are not libpq's)."""
    known = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}
    options = {key: value for key, value in database.get("OPTIONS", {}).items() if key in known}
    return psycopg.conninfo.make_conninfo(
        dbname=database.get("NAME") or None,
        user=database.get("USER") or None,
        password=database.get("PASSWORD") or None,
        host=database.get("HOST") or None,
        port=str(database["PORT"]) if database.get("PORT") else None,
        **{**options, **extra},
    )
