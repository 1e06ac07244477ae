"""The API through gunicorn on loopback: concurrency that an in-process client cannot produce."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from queueapp import apikeys, models
from tests.helpers import GunicornServer, end_task

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def server(tmp_path: Path, transactional_db: None) -> Iterator[GunicornServer]:
    gunicorn = GunicornServer(log_dir=tmp_path)
    yield gunicorn
    gunicorn.stop()


def test_100_concurrent_submissions_with_one_idempotency_key_create_exactly_one_task(
    server: GunicornServer,
) -> None:
    key = apikeys.create_api_key("concurrency")[1]
    body = json.dumps({"task": "add", "args": [20, 22]})
    start = threading.Barrier(100)
    answers: list[tuple[int, int]] = []
    lock = threading.Lock()

    def submit() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        start.wait()
        conn.request(
            "POST",
            "/api/tasks",
            body=body,
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Idempotency-Key": "pay-42",
            },
        )
        response = conn.getresponse()
        payload = json.loads(response.read())
        with lock:
            answers.append((response.status, payload["id"]))

    threads = [threading.Thread(target=submit) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)

    assert len(answers) == 100
    assert models.Task.objects.count() == 1
    assert sorted(status for status, _ in answers) == [200] * 99 + [201]
    assert {task_id for _, task_id in answers} == {models.Task.objects.get().id}


def test_concurrent_retries_make_one_new_run(server: GunicornServer) -> None:
    from tests import tasks

    key = apikeys.create_api_key("retries")[1]
    task_id = int(tasks.add.enqueue(1, 2).id)
    end_task(task_id, "FAILED", attempts=3)
    start = threading.Barrier(20)
    statuses: list[int] = []

    def retry() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        start.wait()
        conn.request("POST", f"/api/tasks/{task_id}/retry", headers={"Authorization": f"Bearer {key}"})
        statuses.append(conn.getresponse().status)

    threads = [threading.Thread(target=retry) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(statuses) == [200] + [409] * 19
    row = models.Task.objects.get(id=task_id)
    assert (row.status, row.attempts, row.max_attempts) == ("READY", 3, 6)


SLOW_CLIENTS = 20
SLOW_FOR = 30.0
"""Seconds the slow clients keep sending, at most."""
HEALTH_DEADLINE = 1.0
"""Seconds a health check may take, connection included."""


def open_slow_body(port: int, key: str) -> socket.socket:
    """A submission whose headers promise 1,000 bytes of body that then come a byte at a time."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {key}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    return sock


def get_health(port: int, key: str, *, timeout: float) -> tuple[int, float]:
    """GET /api/health on a new connection: its status and how many seconds it took in all."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/api/health", headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    return response.status, time.monotonic() - started


def still_waiting(sock: socket.socket) -> bool:
    """The server has neither answered nor closed: it is still reading this body."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    return False


def test_slow_request_bodies_do_not_take_the_api_down(server: GunicornServer) -> None:
    """20 clients trickle their bodies for 30 s while /api/health is asked twice a second: every
    answer is a 200 within a second. The server is the shipped web command (Dockerfile CMD)."""
    key = apikeys.create_api_key("slow clients")[1]
    for _ in range(10):  # every gunicorn worker has loaded the URLconf: cold starts are not timed
        assert get_health(server.port, key, timeout=30)[0] == 200
    slow = [open_slow_body(server.port, key) for _ in range(SLOW_CLIENTS)]
    answers: list[tuple[int, float]] = []
    failure = None
    try:
        end = time.monotonic() + SLOW_FOR
        while (now := time.monotonic()) < end:
            for sock in slow:
                sock.sendall(b" ")
            try:
                answers.append(get_health(server.port, key, timeout=HEALTH_DEADLINE))
            except OSError as exc:
                failure = f"no answer within {HEALTH_DEADLINE} s after {len(answers)} answers: {exc!r}"
                break
            if answers[-1][0] != 200 or answers[-1][1] > HEALTH_DEADLINE:
                break
            time.sleep(max(0.0, now + 0.5 - time.monotonic()))  # pacing, not waiting for anything
        waiting = sum(still_waiting(sock) for sock in slow)
    finally:
        for sock in slow:
            sock.close()

    assert failure is None, f"{failure}; log:\n{server.output()}"
    late = [(status, took) for status, took in answers if status != 200 or took > HEALTH_DEADLINE]
    assert not late, f"{len(late)} of {len(answers)} health checks failed: {late}"
    assert len(answers) >= SLOW_FOR / 0.5 - 2
    assert waiting == SLOW_CLIENTS, "the slow clients held the server for the whole test"


def chunked_submission(size: int, *, end: bool = True) -> Iterator[bytes]:
    """A valid submission of about size bytes (an echo of one long string), framed as 64 KiB
    chunks; without its last chunk when not end."""
    head, tail = b'{"task": "echo", "args": ["', b'"]}'
    body = head + b"x" * (size - len(head) - len(tail)) + tail
    for start in range(0, len(body), 64 * 1024):
        part = body[start : start + 64 * 1024]
        yield b"%x\r\n%s\r\n" % (len(part), part)
    if end:
        yield b"0\r\n\r\n"


def post_chunked(
    port: int, key: str, frames: Iterable[bytes], *, deadline: float
) -> tuple[int, dict[str, str]]:
    """POST /api/tasks with a chunked body, as a client that reads the answer as soon as there is
    one: it stops sending then (or when the server closes), and waits at most deadline seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=deadline)
    with sock:
        sock.sendall(
            b"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {key}\r\n".encode()
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for frame in frames:
                view = memoryview(frame)
                while view:
                    readable, writable, _ = select.select([sock], [sock], [], deadline)
                    if readable:
                        break
                    assert writable, f"the server neither read nor answered within {deadline} s"
                    view = view[sock.send(view) :]
                if view:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and closed: the answer is still there to read
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def test_a_chunked_body_over_the_limit_gets_413_and_stores_nothing(server: GunicornServer) -> None:
    key = apikeys.create_api_key("chunked")[1]
    status, answer = post_chunked(server.port, key, chunked_submission(10 * 1024 * 1024), deadline=30)
    assert (status, answer["error"]) == (413, "body_too_large"), answer
    assert models.Task.objects.count() == 0


def test_a_chunked_body_is_not_read_past_the_limit(server: GunicornServer) -> None:
    """The body goes on past the limit and never ends: the answer cannot wait for its end."""
    key = apikeys.create_api_key("chunked")[1]
    limit = settings.TASKQUEUE["API_MAX_BODY_BYTES"]
    frames = chunked_submission(limit + 256 * 1024, end=False)
    status, answer = post_chunked(server.port, key, frames, deadline=10)
    assert (status, answer["error"]) == (413, "body_too_large"), answer


def test_a_valid_chunked_submission_is_accepted(server: GunicornServer) -> None:
    key = apikeys.create_api_key("chunked")[1]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    # An iterable body of unknown length: http.client sends it as Transfer-Encoding: chunked.
    parts = iter([b'{"task": "add", ', b'"args": [20, 22]}'])
    conn.request(
        "POST",
        "/api/tasks",
        body=parts,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 201, answer
    assert models.Task.objects.get(id=answer["id"]).args == [20, 22]

    big = post_chunked(
        server.port, key, chunked_submission(settings.TASKQUEUE["API_MAX_BODY_BYTES"] // 2), deadline=10
    )
    assert big[0] == 201, big[1]
    assert models.Task.objects.count() == 2
