"""The REST API's boundary: API-key auth, strict JSON, body limits, and one error shape for all.

Every error is `{"error": "<code>", "detail": "<what was wrong>"}` with the status that fits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.tasks.exceptions import TaskResultDoesNotExist
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer

from queueapp import apikeys, models
from queueapp.submissions import SubmissionError

API_PREFIX = "/api/"


def error(status: int, code: str, detail: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": code, "detail": detail}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


class DatabaseUnavailable(Exception):
    """The database cannot be reached."""


class ApiKeyAuth(HttpBearer):
    """`Authorization: Bearer tq_...`; revoked and unknown keys are refused alike (401)."""

    def authenticate(self, request: HttpRequest, token: str) -> models.ApiKey | None:
        try:
            return apikeys.authenticate(token)
        except (OperationalError, InterfaceError) as exc:
            raise DatabaseUnavailable(str(exc)) from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (NaN and Infinity are refused)")


class StrictJsonParser(Parser):
    def parse_body(self, request: HttpRequest) -> Any:
        return json.loads(request.body, parse_constant=_reject_constant)


class BodyLimits:
    """Middleware for /api/: JSON bodies only, no larger than TASKQUEUE["API_MAX_BODY_BYTES"].

    Checked before anything reads the body, so an oversized request costs nothing and stores nothing.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(API_PREFIX) and request.method in ("POST", "PUT", "PATCH"):
            limit = settings.TASKQUEUE["API_MAX_BODY_BYTES"]
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return error(400, "bad_content_length", "Content-Length is not a number")
            if length > limit:
                return error(413, "body_too_large", f"the body is {length} bytes; the limit is {limit}")
            content_type = request.content_type or ""
            if length and content_type != "application/json":
                return error(415, "unsupported_media_type", f"send application/json, not {content_type!r}")
        return self.get_response(request)


def _validation_detail(exc: ValidationError) -> str:
    parts = []
    for item in exc.errors:
        location = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "payload"))
        parts.append(f"{location or 'body'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is invalid"


def install_error_handlers(api: NinjaAPI) -> None:
    def on_validation(request: HttpRequest, exc: Any) -> HttpResponse:
        return error(422, "invalid_request", _validation_detail(exc))

    def on_auth(request: HttpRequest, exc: Any) -> HttpResponse:
        return error(401, "unauthorized", "send a valid, unrevoked API key as `Authorization: Bearer <key>`")

    def on_http(request: HttpRequest, exc: Any) -> HttpResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            return error(400, "invalid_json", f"the body is not valid JSON: {exc.__cause__}")
        return error(exc.status_code, "http_error", str(exc))

    def on_not_found(request: HttpRequest, exc: Any) -> HttpResponse:
        return error(404, "not_found", str(exc) or "no such resource")

    def on_submission(request: HttpRequest, exc: Any) -> HttpResponse:
        headers = {"Retry_After": str(settings.TASKQUEUE["API_RETRY_AFTER"])} if exc.status == 429 else {}
        return error(exc.status, exc.code, str(exc), **headers)

    def on_too_big(request: HttpRequest, exc: Any) -> HttpResponse:
        return error(413, "body_too_large", str(exc))

    def on_database(request: HttpRequest, exc: Any) -> HttpResponse:
        return error(
            503, "database_unavailable", "the database cannot be reached; retry later", Retry_After="5"
        )

    api.add_exception_handler(ValidationError, on_validation)
    api.add_exception_handler(AuthenticationError, on_auth)
    api.add_exception_handler(HttpError, on_http)
    api.add_exception_handler(Http404, on_not_found)
    api.add_exception_handler(TaskResultDoesNotExist, on_not_found)
    api.add_exception_handler(SubmissionError, on_submission)
    api.add_exception_handler(RequestDataTooBig, on_too_big)
    api.add_exception_handler(DatabaseUnavailable, on_database)
    api.add_exception_handler(OperationalError, on_database)
    api.add_exception_handler(InterfaceError, on_database)
