"""The REST API through Django's test client against the real database."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse
from django.test import Client, override_settings

from queueapp import apikeys, models, store
from queueapp.api_support import BodyLimits
from tests.conftest import make_worker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key() -> str:
    return apikeys.create_api_key("tests")[1]


@pytest.fixture
def client(key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def post(client: Client, path: str, body: Any, **headers: str) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json", headers=headers)


def test_submit_returns_201_with_the_task_and_its_url(client: Client) -> None:
    response = post(client, "/api/tasks", {"task": "add", "args": [1, 2], "priority": 7, "max_attempts": 4})
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["task"], body["status"], body["priority"], body["max_attempts"]) == ("add", "READY", 7, 4)
    assert body["url"] == f"/api/tasks/{body['id']}"
    row = models.Task.objects.get(id=body["id"])
    assert (row.task_path, row.args) == ("tests.tasks.add", [1, 2])

    fetched = client.get(body["url"])
    assert fetched.status_code == 200
    assert fetched.json()["id"] == body["id"]


def test_same_idempotency_key_and_body_returns_the_original_different_body_conflicts(client: Client) -> None:
    first = post(client, "/api/tasks", {"task": "add", "args": [1, 2]}, Idempotency_Key="order-17")
    again = post(client, "/api/tasks", {"task": "add", "args": [1, 2]}, Idempotency_Key="order-17")
    other = post(client, "/api/tasks", {"task": "add", "args": [9, 9]}, Idempotency_Key="order-17")
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert again.json()["id"] == first.json()["id"]
    assert other.json()["error"] == "idempotency_conflict"
    assert models.Task.objects.count() == 1


def test_idempotency_keys_belong_to_their_api_key(client: Client) -> None:
    other_client = Client(HTTP_AUTHORIZATION=f"Bearer {apikeys.create_api_key('other')[1]}")
    first = post(client, "/api/tasks", {"task": "add", "args": [1, 2]}, Idempotency_Key="k")
    second = post(other_client, "/api/tasks", {"task": "add", "args": [1, 2]}, Idempotency_Key="k")
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]


@pytest.mark.parametrize("name", ["os.system", "subprocess.Popen", "antigravity", "tests.tasks.add", "nope"])
def test_unregistered_names_are_rejected_and_nothing_is_imported(client: Client, name: str) -> None:
    modules_before = set(sys.modules)
    response = post(client, "/api/tasks", {"task": name, "args": ["echo pwned"]})
    assert response.status_code == 422
    assert response.json()["error"] in ("unknown_task", "invalid_request")
    assert set(sys.modules) == modules_before
    assert models.Task.objects.count() == 0


def test_oversized_body_gets_413_and_stores_nothing(client: Client) -> None:
    body = {"task": "echo", "args": ["x" * 1_100_000]}
    response = post(client, "/api/tasks", body)
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert models.Task.objects.count() == 0


@override_settings(TASKQUEUE={**__import__("django.conf").conf.settings.TASKQUEUE, "API_MAX_BODY_BYTES": 200})
def test_body_limit_is_configurable(client: Client) -> None:
    assert post(client, "/api/tasks", {"task": "echo", "args": ["x" * 300]}).status_code == 413
    assert post(client, "/api/tasks", {"task": "echo", "args": ["x"]}).status_code == 201


def chunked_request(body: bytes, *, terminated: bool, content_type: str = "application/json") -> WSGIRequest:
    """POST /api/tasks as a WSGI server hands over a chunked body: no CONTENT_LENGTH, the chunks
    decoded, and wsgi.input_terminated when the server ends the input with the body."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/api/tasks",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": terminated,
        "HTTP_TRANSFER_ENCODING": "chunked",
        "CONTENT_TYPE": content_type,
    }
    return WSGIRequest(environ)


def test_a_chunked_body_is_counted_up_to_the_limit_and_needs_a_server_that_ends_it() -> None:
    """Through gunicorn in tests/test_api_http.py; here the exact boundary, and a server that does
    not end the input (reading it to its end could wait forever): 411."""
    echo = BodyLimits(lambda request: HttpResponse(request.body))
    limit = settings.TASKQUEUE["API_MAX_BODY_BYTES"]
    assert echo(chunked_request(b'{"a": 1}', terminated=True)).content == b'{"a": 1}'
    assert len(echo(chunked_request(b" " * limit, terminated=True)).content) == limit
    assert echo(chunked_request(b" " * (limit + 1), terminated=True)).status_code == 413
    assert echo(chunked_request(b"{}", terminated=False)).status_code == 411
    assert echo(chunked_request(b"a=1", terminated=True, content_type="text/plain")).status_code == 415


def test_a_key_scoped_to_one_task_gets_403_on_another() -> None:
    scoped = Client(
        HTTP_AUTHORIZATION=f"Bearer {apikeys.create_api_key('mailer', task_patterns=['send-*'])[1]}"
    )
    assert post(scoped, "/api/tasks", {"task": "send-email", "args": ["a@example.com"]}).status_code == 201
    refused = post(scoped, "/api/tasks", {"task": "add", "args": [1, 2]})
    assert refused.status_code == 403
    assert refused.json() == {"error": "task_not_allowed", "detail": "this API key may not submit 'add'"}
    assert models.Task.objects.count() == 1


def test_a_revoked_key_gets_401(key: str, client: Client) -> None:
    assert client.get("/api/tasks").status_code == 200
    assert apikeys.revoke_api_key(key.split("_")[1]) == 1
    response = client.get("/api/tasks")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize("header", [None, "Bearer nope", "Bearer tq_000000000000_wrong", "Basic abc"])
def test_reading_needs_a_valid_key(header: str | None) -> None:
    anonymous = Client(**({"HTTP_AUTHORIZATION": header} if header else {}))
    for path in ("/api/tasks", "/api/tasks/1", "/api/workers", "/api/health", "/api/stats"):
        assert anonymous.get(path).status_code == 401, path


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({"task": "add", "priority": 101}, "invalid_request", "priority"),
        ({"task": "add", "run_after": "2030-01-01T00:00:00"}, "invalid_request", "timezone"),
        ({"task": "add", "run_after": "tomorrow"}, "invalid_request", "run_after"),
        ({"task": "add", "args": "1,2"}, "invalid_request", "args"),
        ({"task": "add", "surprise": 1}, "invalid_request", "surprise"),
        ({"task": "add", "queue": "nope"}, "invalid_request", "queue"),
        (
            {"task": "echo", "args": [[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]},
            "invalid_request",
            "nested deeper",
        ),
        ({"task": "echo", "args": list(range(101))}, "invalid_request", "args"),
    ],
)
def test_bad_input_is_refused_with_a_clear_json_error(
    client: Client, body: dict[str, Any], code: str, fragment: str
) -> None:
    response = post(client, "/api/tasks", body)
    assert response.status_code == 422, response.content
    assert response.json()["error"] == code
    assert fragment in response.json()["detail"]
    assert models.Task.objects.count() == 0


@pytest.mark.parametrize(
    "raw", ['{"task": "add", "args": [NaN]}', '{"task": "add", "args": [Infinity]}', "{oops"]
)
def test_invalid_json_and_nan_are_refused(client: Client, raw: str) -> None:
    response = client.post("/api/tasks", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert models.Task.objects.count() == 0


def test_only_json_is_accepted(client: Client) -> None:
    response = client.post("/api/tasks", data="task=add", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


def test_bulk_is_all_or_nothing(client: Client) -> None:
    good = [{"task": "add", "args": [i, i]} for i in range(999)]
    bad = post(client, "/api/tasks/bulk", {"tasks": [*good, {"task": "os.system"}]})
    assert bad.status_code == 422
    assert models.Task.objects.count() == 0
    ok = post(
        client, "/api/tasks/bulk", {"tasks": [*good, {"task": "send-email", "args": ["x@example.com"]}]}
    )
    assert ok.status_code == 201
    assert len(ok.json()["tasks"]) == 1000
    assert models.Task.objects.count() == 1000
    too_many = post(client, "/api/tasks/bulk", {"tasks": [*good, *good]})
    assert too_many.status_code == 422
    assert models.Task.objects.count() == 1000


def test_back_pressure_answers_429_with_retry_after(client: Client) -> None:
    from django.conf import settings

    limits = {**settings.TASKQUEUE, "QUEUE_LIMITS": {"default": 3}}
    with override_settings(TASKQUEUE=limits):
        for i in range(3):  # up to the limit: accepted
            assert post(client, "/api/tasks", {"task": "add", "args": [i, i]}).status_code == 201
        full = post(client, "/api/tasks", {"task": "add", "args": [9, 9]})
        other_queue = post(client, "/api/tasks", {"task": "send-email", "args": ["a@example.com"]})
    assert full.status_code == 429
    assert full["Retry-After"] == str(settings.TASKQUEUE["API_RETRY_AFTER"])
    assert full.json()["error"] == "queue_full"
    assert other_queue.status_code == 201
    assert models.Task.objects.count() == 4


def test_list_filters_and_keyset_pagination(client: Client) -> None:
    for i in range(7):
        post(client, "/api/tasks", {"task": "add", "args": [i, i]})
    post(client, "/api/tasks", {"task": "send-email", "args": ["a@example.com"]})

    seen: list[int] = []
    url = "/api/tasks?task=add&limit=3"
    while url:
        page = client.get(url).json()
        assert len(page["tasks"]) <= 3
        seen += [task["id"] for task in page["tasks"]]
        url = f"/api/tasks?task=add&limit=3&cursor={page['next_cursor']}" if page["next_cursor"] else ""
    assert len(seen) == 7
    assert seen == sorted(seen, reverse=True)

    assert len(client.get("/api/tasks?queue=emails").json()["tasks"]) == 1
    assert len(client.get("/api/tasks?status=FAILED").json()["tasks"]) == 0
    assert client.get("/api/tasks?limit=501").status_code == 422
    assert client.get("/api/tasks?cursor=garbage").json()["error"] == "invalid_request"
    assert client.get("/api/tasks?status=BOGUS").status_code == 422


@pytest.mark.parametrize("query", ["stauts=FAILED", "=0.0", "status=FAILED&page=2"])
def test_a_list_parameter_the_api_does_not_know_is_refused_not_ignored(client: Client, query: str) -> None:
    """Ignored, a misspelt filter answered with every task as if it had matched."""
    post(client, "/api/tasks", {"task": "add", "args": [1, 1]})
    response = client.get(f"/api/tasks?{query}")
    assert response.status_code == 422, response.content
    assert response.json()["error"] == "invalid_request"


def test_cancel_and_retry(client: Client) -> None:
    task_id = post(client, "/api/tasks", {"task": "add", "args": [1, 2]}).json()["id"]
    assert (
        client.post(f"/api/tasks/{task_id}/retry", content_type="application/json").status_code == 409
    )  # READY: nothing to retry
    cancelled = client.post(f"/api/tasks/{task_id}/cancel", content_type="application/json")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "CANCELLED")
    assert client.post(f"/api/tasks/{task_id}/cancel", content_type="application/json").status_code == 409
    retried = client.post(f"/api/tasks/{task_id}/retry", content_type="application/json")
    assert (retried.status_code, retried.json()["status"]) == (200, "READY")
    assert (
        client.post(f"/api/tasks/{task_id}/retry", content_type="application/json").status_code == 409
    )  # one new run only
    assert client.post("/api/tasks/999999/cancel", content_type="application/json").status_code == 404
    assert client.get("/api/tasks/999999").status_code == 404


def test_retry_gives_a_fresh_budget_on_top_of_the_attempts_used(client: Client) -> None:
    task_id = post(client, "/api/tasks", {"task": "add", "args": [1, 2], "max_attempts": 1}).json()["id"]
    worker = make_worker()
    (row,) = store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    store.fail_task(
        task_id=row.id,
        worker_id=worker.id,
        attempt=1,
        error={"exception_class_path": "x.Y", "message": "", "traceback": ""},
        backoff_base=0,
        backoff_max=0,
    )
    assert client.get(f"/api/tasks/{task_id}").json()["status"] == "FAILED"
    retried = client.post(f"/api/tasks/{task_id}/retry", content_type="application/json").json()
    assert (retried["status"], retried["attempts"], retried["max_attempts"]) == (
        "READY",
        1,
        4,
    )  # default 3 more


def test_workers_health_and_stats(client: Client) -> None:
    make_worker()
    post(client, "/api/tasks", {"task": "add", "args": [1, 2]})
    workers = client.get("/api/workers").json()["workers"]
    assert [w["state"] for w in workers] == ["alive"]
    health = client.get("/api/health").json()
    assert (health["database"], health["live_workers"], health["pending"]["READY"]) == ("ok", 1, 1)
    stats = client.get("/api/stats").json()
    assert stats["queues"] == {"default": {"READY": 1}}
    assert set(stats["throughput"]) == {"1m", "5m", "15m"}


def test_openapi_schema_and_docs_are_served(client: Client) -> None:
    schema = client.get("/api/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status in ("401", "422"):
                assert status in operation["responses"], f"{method} {path} does not declare {status}"
    docs = client.get("/api/docs")
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower()
    # Swagger UI's own files, served from here (ninja is not an installed app: see settings).
    for asset in ("ninja/swagger-ui-bundle.js", "ninja/swagger-ui.css"):
        assert f"/static/{asset}".encode() in docs.content
        assert finders.find(asset)
    assert b'"url": "/api/openapi.json"' in docs.content


def test_strings_postgresql_cannot_store_get_a_clear_422(client: Client) -> None:
    response = client.post(
        "/api/tasks", data='{"task": "echo", "args": ["a\\u0000b"]}', content_type="application/json"
    )
    assert response.status_code == 422
    assert "NUL" in response.json()["detail"]
    assert models.Task.objects.count() == 0


def test_create_and_revoke_api_keys_from_the_command_line() -> None:
    from tests.helpers import run_manage

    created = run_manage("create_api_key", "mailer", "--tasks", "send-*", "nothing-matches-*")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("tq_")
    assert "it will not be shown again" in created.stderr
    assert "'nothing-matches-*' matches no task" in created.stderr
    row = models.ApiKey.objects.get(name="mailer")
    assert row.task_patterns == ["send-*", "nothing-matches-*"]
    assert key not in (row.key_hash, row.prefix)  # only a hash is stored
    assert apikeys.authenticate(key) == row

    revoked = run_manage("revoke_api_key", row.prefix)
    assert (revoked.returncode, revoked.stdout.strip()) == (0, "revoked 1 key(s)")
    assert apikeys.authenticate(key) is None
    again = run_manage("revoke_api_key", row.prefix)
    assert again.returncode != 0
    assert "no live API key" in again.stderr
