"""The REST API's boundary: API-key auth, strict JSON, body limits, and one error shape for all.

Every error is `{"error": "<code>", "detail": "<what was wrong>"}` with the status that fits.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.tasks.exceptions import TaskResultDoesNotExist
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.openapi.docs import Swagger
from ninja.parser import Parser
from ninja.security import HttpBearer

from queueapp import apikeys, conf, models
from queueapp.submissions import SubmissionError

API_PREFIX = "/api/"


def error(status: int, code: str, detail: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": code, "detail": detail}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


class Docs(Swagger):
    """ninja's Swagger UI from its own template and static files (settings.NINJA_ASSETS): ninja would
    fall back to a CDN, since it is not an installed app. No CSRF token: the API takes bearer keys."""

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        context = {
            "swagger_settings": json.dumps({**self.settings, "url": self.get_openapi_url(api, kwargs)}),
            "api": api,
            "add_csrf": False,
        }
        return render(request, self.template, context)


class DatabaseUnavailable(Exception):
    """The database cannot be reached."""


class ApiKeyAuth(HttpBearer):
    """`Authorization: Bearer tq_...`; revoked and unknown keys are refused alike (401)."""

    def authenticate(self, request: HttpRequest, token: str) -> models.ApiKey | None:
        try:
            return apikeys.authenticate(token)
        except (OperationalError, InterfaceError) as exc:
            raise DatabaseUnavailable(str(exc)) from exc


class HealthAuth(HttpBearer):
    """/api/health's key check: when the database that holds the keys cannot be reached, the
    request goes on to hear "unhealthy: database unreachable" (all /readyz tells anyone) instead of
    an error that says nothing about health."""

    def authenticate(self, request: HttpRequest, token: str) -> models.ApiKey | str | None:
        try:
            return apikeys.authenticate(token)
        except (OperationalError, InterfaceError):
            return "unverified"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (NaN and Infinity are refused)")


class StrictJsonParser(Parser):
    def parse_body(self, request: HttpRequest) -> Any:
        return json.loads(request.body, parse_constant=_reject_constant)


class BodyLimits:
    """Middleware for /api/: JSON bodies only, no larger than TASKQUEUE["API_MAX_BODY_BYTES"].

    A body with a Content-Length is checked before anything reads it, so an oversized request costs
    nothing and stores nothing. A body without one (Transfer-Encoding: chunked) is counted while it
    is read, and reading stops at the first byte past the limit.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(API_PREFIX) and request.method in ("POST", "PUT", "PATCH"):
            limit = conf.get().api_max_body_bytes
            if "CONTENT_LENGTH" not in request.META and "HTTP_TRANSFER_ENCODING" in request.META:
                refused = read_unannounced_body(request, limit)
                if refused is not None:
                    return refused
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


def read_unannounced_body(request: HttpRequest, limit: int) -> HttpResponse | None:
    """Read a body sent without Content-Length (chunked) into the request, or refuse it.

    Django reads only Content-Length bytes, so it would see such a body as empty. The server
    decodes the chunks and says the input ends with the body (WSGI's wsgi.input_terminated, which
    gunicorn sets); this reads at most limit + 1 bytes of it, then gives Django the body and its
    length as if it had come with a Content-Length. None when the body was accepted.
    """
    if not request.META.get("wsgi.input_terminated"):
        # Reading to the end of an input the server does not end could wait forever.
        return error(411, "length_required", "send a Content-Length: this server cannot read chunked bodies")
    stream = request.META["wsgi.input"]
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            part = stream.read(min(64 * 1024, limit + 1 - size))
        except Exception as exc:  # the server's own errors for a malformed chunk, or a lost client
            return error(400, "unreadable_body", f"the chunked body could not be read: {exc}")
        if not part:
            break
        parts.append(part)
        size += len(part)
    if size > limit:
        return error(413, "body_too_large", f"the body is over the limit of {limit} bytes")
    request.META["CONTENT_LENGTH"] = str(size)
    # Django reads the body from _stream (a LimitedStream over the input, of length 0 here); after
    # reading a body itself it puts a BytesIO there too.
    request._stream = io.BytesIO(b"".join(parts))
    return None


def _field_path(loc: Sequence[Any]) -> Sequence[Any]:
    """A field's path in the request: ninja puts where it came from (body, query) and the view's
    parameter name first; a field of the request is named "payload" only when it is called so."""
    start = 0
    if len(loc) > start and loc[start] in ("body", "query", "path"):
        start += 1
    if len(loc) > start and loc[start] == "payload":
        start += 1
    return loc[start:]


def _validation_detail(exc: ValidationError) -> str:
    parts = []
    for item in exc.errors:
        location = ".".join(str(part) for part in _field_path(item.get("loc", ())))
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
        headers = {"Retry_After": str(conf.get().api_retry_after)} if exc.status == 429 else {}
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
