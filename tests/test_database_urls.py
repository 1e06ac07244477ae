"""DATABASE_URL and TASKQUEUE_LISTEN_DATABASE_URL read as libpq reads them: several hosts included."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured

from queueapp import database_urls
from workers import db

LIMITS = db.ConnectionLimits(stale_after=30)


def test_several_hosts_keep_each_its_own_port_and_the_libpq_options() -> None:
    parsed = database_urls.parse(
        "postgres://app:p%40ss@db1:5433,db2/app?target_session_attrs=read-write&connect_timeout=3"
    )
    assert parsed == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "app",
        "USER": "app",
        "PASSWORD": "p@ss",
        "HOST": "db1,db2",
        "PORT": "5433,",  # db2 on the default port, not on db1's
        "OPTIONS": {"target_session_attrs": "read-write", "connect_timeout": "3"},
    }


def test_ipv6_hosts_and_socket_directories_come_out_as_libpq_wants_them() -> None:
    assert database_urls.parse("postgresql://app@[::1]:5432,[::1]:5433/app")["HOST"] == "::1,::1"
    socket_url = "postgres://app@%2Fvar%2Frun%2Fpostgresql/app"
    assert database_urls.parse(socket_url)["HOST"] == "/var/run/postgresql"


def test_a_url_libpq_refuses_is_a_configuration_error_that_says_why() -> None:
    with pytest.raises(ImproperlyConfigured, match='invalid URI query parameter: "conn_max_age"'):
        database_urls.parse("postgres://app@db1/app?conn_max_age=60")


def test_other_schemes_are_left_to_django_environ() -> None:
    assert database_urls.parse("sqlite:////tmp/x.db")["ENGINE"] == "django.db.backends.sqlite3"


def test_the_listener_connects_to_every_host_with_the_options_of_database_url(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = settings.DATABASES["default"]
    monkeypatch.setitem(default, "HOST", "db1,db2")
    monkeypatch.setitem(default, "PORT", "5432,5433")
    monkeypatch.setitem(default, "OPTIONS", {"target_session_attrs": "read-write", "isolation_level": 1})
    settings.TASKQUEUE = {**settings.TASKQUEUE, "LISTEN_DATABASE_URL": ""}
    listen = psycopg.conninfo.conninfo_to_dict(db.listen_conninfo(LIMITS))
    assert listen["host"] == "db1,db2"
    assert listen["port"] == "5432,5433"
    assert listen["target_session_attrs"] == "read-write"
    assert "isolation_level" not in listen  # Django's, not libpq's
    assert listen["application_name"] == "taskqueue-listener"


@pytest.mark.parametrize(
    "url",
    ["postgres://l@db3:6000,db4:6001/app?target_session_attrs=read-write", "postgresql://l@db3,db4/app"],
)
def test_a_listen_url_is_read_like_database_url(settings: Any, url: str) -> None:
    settings.TASKQUEUE = {**settings.TASKQUEUE, "LISTEN_DATABASE_URL": url}
    listen = psycopg.conninfo.conninfo_to_dict(db.listen_conninfo(LIMITS))
    assert listen == {
        **psycopg.conninfo.conninfo_to_dict(url),
        **{key: str(value) for key, value in LIMITS.socket_params().items()},
        "application_name": "taskqueue-listener",
    }
