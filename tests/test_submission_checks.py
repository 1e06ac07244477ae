"""Arguments are checked against the task function's signature when they are submitted (Python and
HTTP), and a refused submission names what was wrong, down to an unknown field's own name."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from queueapp import apikeys, exceptions, models
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client() -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {apikeys.create_api_key('tests')[1]}")


def post(client: Client, path: str, body: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json")


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        ((1,), {}, "missing a required argument: 'b'"),
        ((1, 2, 3), {}, "too many positional arguments"),
        ((1, 2), {"c": 3}, "unexpected keyword argument 'c'"),
        ((1, 2), {"a": 3}, "multiple values for argument 'a'"),
    ],
)
def test_enqueue_refuses_arguments_the_function_cannot_take(
    args: tuple[Any, ...], kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(exceptions.ArgumentsDoNotMatch, match=fragment) as raised:
        tasks.add.enqueue(*args, **kwargs)
    assert str(raised.value).startswith("add(a, b) cannot be called with these arguments: ")
    assert models.Task.objects.count() == 0


def test_a_bulk_with_one_mismatched_call_stores_nothing() -> None:
    calls = [((i, i), {}) for i in range(20)] + [((1,), {})]
    with pytest.raises(exceptions.ArgumentsDoNotMatch):
        tasks.add.enqueue_many(calls)
    assert models.Task.objects.count() == 0


def test_the_context_argument_is_not_expected_from_the_caller() -> None:
    tasks.with_context.enqueue(7)
    with pytest.raises(exceptions.ArgumentsDoNotMatch, match="too many positional arguments"):
        tasks.with_context.enqueue(None, 7)
    assert models.Task.objects.count() == 1


def test_http_submission_with_mismatched_arguments_gets_422_naming_the_mismatch(client: Client) -> None:
    response = post(client, "/api/tasks", {"task": "add", "args": [1, 2], "kwargs": {"c": 2}})
    assert response.status_code == 422, response.content
    assert response.json()["error"] == "invalid_task"
    assert "unexpected keyword argument 'c'" in response.json()["detail"]

    bulk = post(client, "/api/tasks/bulk", {"tasks": [{"task": "add", "args": [1, 2]}, {"task": "add"}]})
    assert bulk.status_code == 422, bulk.content
    assert "missing a required argument: 'a'" in bulk.json()["detail"]
    assert models.Task.objects.count() == 0


@pytest.mark.parametrize("field", ["payload", "body", "surprise", "tasks"])
def test_an_unknown_field_is_reported_by_its_own_name(client: Client, field: str) -> None:
    response = post(client, "/api/tasks", {"task": "add", "args": [1, 2], field: 1})
    assert response.status_code == 422, response.content
    assert response.json()["detail"] == f"{field}: Extra inputs are not permitted"


def test_an_unknown_field_of_a_bulk_item_names_its_place(client: Client) -> None:
    response = post(client, "/api/tasks/bulk", {"tasks": [{"task": "add", "args": [1, 2], "payload": 1}]})
    assert response.status_code == 422, response.content
    assert response.json()["detail"] == "tasks.0.payload: Extra inputs are not permitted"
