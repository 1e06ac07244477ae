"""One worker process: a producer in the main thread, tasks in a thread pool, and the listener,
heartbeat and reaper in threads of their own.

Shutdown: the first SIGTERM/SIGINT stops claiming, hands back tasks claimed but not started, lets
running ones finish within the grace period, marks the worker STOPPED and exits 0. A second signal
(or the grace running out) takes the running tasks back through the failure path, attempt counted,
and exits 1. A worker that finds itself marked LOST exits 2; one whose heartbeat or listener thread
died exits 3.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType

import prometheus_client
from django.db import connection
from django.tasks import task_backends

from queueapp import exceptions, store
from queueapp.backend import PostgresBackend
from workers import db
from workers.config import WorkerConfig
from workers.executor import Executor, fail_attempt
from workers.heartbeat import Heartbeat
from workers.listener import Listener
from workers.producer import Producer
from workers.reaper import Reaper
from workers.services import ServiceThread

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_INTERRUPTED, EXIT_LOST, EXIT_SERVICE_DIED = 0, 1, 2, 3


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.id = config.worker_id
        backend = task_backends["default"]
        assert isinstance(backend, PostgresBackend)
        self.wake = threading.Event()
        self.stopping = threading.Event()  # first signal: stop claiming
        self.hard_stop = threading.Event()  # second signal, lost, or a dead service: stop now
        self.exit_code = EXIT_OK
        self.producer = Producer(worker_id=self.id, queues=config.queues)
        self.executor = Executor(worker_id=self.id, backend=backend, give_up=self.hard_stop)
        self.pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="taskqueue-task")
        self.running: dict[Future[str], store.TaskRow] = {}
        self.lock = threading.Lock()
        self.last_claim_was_full = False
        self.done_count = 0
        self.services_stop = threading.Event()
        self.listener = Listener(
            db.listen_conninfo(), queues=config.queues, wake=self.wake, stop=self.services_stop
        )
        self.heartbeat = Heartbeat(
            self.id, on_lost=self.lost, parent_pid=config.parent_pid, on_orphaned=self.orphaned
        )
        self.reaper = Reaper(
            stale_after=config.stale_after, backoff_base=config.backoff_base, backoff_max=config.backoff_max
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        self.install_signal_handlers()
        if self.config.metrics_port is not None:
            prometheus_client.start_http_server(self.config.metrics_port)
        self.register()
        threads = [
            ServiceThread(self.listener, interval=0, stop=self.services_stop, on_crash=self.service_died),
            ServiceThread(
                self.heartbeat,
                interval=self.config.heartbeat_interval,
                stop=self.services_stop,
                on_crash=self.service_died,
            ),
            ServiceThread(
                self.reaper,
                interval=self.config.reap_interval,
                stop=self.services_stop,
                on_crash=self.service_died,
            ),
        ]
        for thread in threads:
            thread.start()
        try:
            self.loop()
            self.drain()
        finally:
            self.services_stop.set()
            for thread in threads:
                thread.join(5)
            # Only now: a heartbeat after STOPPED would find no live row and take itself for LOST.
            # A LOST worker stays LOST (the statement matches nothing).
            self.safe_write(lambda: store.set_worker_state(self.id, "STOPPED"))
            self.listener.close()
            self.pool.shutdown(wait=False, cancel_futures=True)
            connection.close()
        logger.info(
            "worker_exit worker=%s exit_code=%s tasks_done=%s", self.id, self.exit_code, self.done_count
        )
        return self.exit_code

    def register(self) -> None:
        delay = 0.5
        while True:
            try:
                store.register_worker(
                    worker_id=self.id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    queues=self.config.queues,
                    concurrency=self.config.concurrency,
                )
                break
            except db.CONNECTION_ERRORS as exc:
                if self.stopping.is_set():
                    raise
                logger.warning("register_failed error=%s retry_in=%.1fs", exc, delay)
                db.reset_connection()
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)
        logger.info(
            "worker_started worker=%s pid=%s queues=%s concurrency=%s",
            self.id,
            os.getpid(),
            ",".join(self.config.queues),
            self.config.concurrency,
        )

    def loop(self) -> None:
        """Claim for free slots whenever woken (NOTIFY, a finished task) or the poll timer fires."""
        while not self.stopping.is_set():
            self.wake.clear()
            if self.config.max_tasks is not None and self.done_count >= self.config.max_tasks:
                logger.info("max_tasks_reached worker=%s tasks=%s", self.id, self.done_count)
                self.stopping.set()
                break
            free = self.free_slots()
            claimed = self.producer.run_once(free) if free else []
            self.last_claim_was_full = bool(claimed) and len(claimed) == free
            for row in claimed:
                self.submit(row)
            if self.config.burst and not claimed and self.idle() and self.producer.healthy:
                logger.info("burst_done worker=%s: nothing ready", self.id)
                self.stopping.set()
                break
            if self.last_claim_was_full and self.free_slots():
                continue
            self.wake.wait(self.poll_timeout())

    def poll_timeout(self) -> float:
        if not self.producer.healthy:
            return min(self.config.poll_interval, 0.5)  # the database is away: retry soon
        return self.config.poll_interval * random.uniform(0.8, 1.2)

    def drain(self) -> None:
        """Finish or hand back what this worker holds (run() then records it STOPPED)."""
        self.safe_write(lambda: store.set_worker_state(self.id, "STOPPING"))
        self.release_unstarted()
        deadline = time.monotonic() + self.config.grace
        while self.running and not self.hard_stop.is_set() and time.monotonic() < deadline:
            self.wake.wait(0.1)
            self.wake.clear()
        if self.running:
            self.interrupt_running()
            self.exit_code = self.exit_code or EXIT_INTERRUPTED

    # -- tasks -----------------------------------------------------------------------------------

    def free_slots(self) -> int:
        with self.lock:
            free = self.config.concurrency - len(self.running)
            if self.config.max_tasks is not None:  # never claim past --max-tasks
                free = min(free, self.config.max_tasks - self.done_count - len(self.running))
            return max(free, 0)

    def idle(self) -> bool:
        with self.lock:
            return not self.running

    def submit(self, row: store.TaskRow) -> None:
        with self.lock:
            future = self.pool.submit(self.executor.execute, row)
            self.running[future] = row
        future.add_done_callback(self.task_done)

    def task_done(self, future: Future[str]) -> None:
        with self.lock:
            self.running.pop(future, None)
            if not future.cancelled():
                self.done_count += 1
        if not future.cancelled() and future.exception() is not None:
            logger.error("executor_crashed error=%r", future.exception())
        if self.last_claim_was_full or self.stopping.is_set() or self.config.max_tasks or self.config.burst:
            self.wake.set()

    def release_unstarted(self) -> None:
        with self.lock:
            unstarted = [(future, row) for future, row in self.running.items() if future.cancel()]
        if unstarted:
            released = self.safe_write(
                lambda: store.release_tasks(
                    worker_id=self.id, claimed=[(row.id, row.attempts) for _, row in unstarted]
                )
            )
            logger.info("released_unstarted worker=%s tasks=%s", self.id, released)

    def interrupt_running(self) -> None:
        """Take running tasks back through the failure path (attempt counted): READY or FAILED."""
        with self.lock:
            rows = list(self.running.values())
        for row in rows:
            outcome = self.safe_write(
                functools.partial(
                    fail_attempt,
                    exceptions.WorkerInterrupted(f"worker {self.id} stopped during attempt {row.attempts}"),
                    task_id=row.id,
                    worker_id=self.id,
                    attempt=row.attempts,
                    backoff_base=self.config.backoff_base,
                    backoff_max=self.config.backoff_max,
                )
            )
            logger.warning(
                "task_interrupted id=%s task=%s attempt=%s now=%s",
                row.id,
                row.task_path,
                row.attempts,
                outcome[0] if outcome else "unchanged",
            )

    def safe_write[T](self, write: Callable[[], T]) -> T | None:
        try:
            return write()
        except db.CONNECTION_ERRORS as exc:
            logger.error("shutdown_write_failed worker=%s error=%s: the reaper will clean up", self.id, exc)
            db.reset_connection()
            return None

    # -- signals and failures --------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.handle_signal)
        signal.signal(signal.SIGINT, self.handle_signal)

    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping.is_set():
            logger.warning("worker_stop_now worker=%s signal=%s", self.id, signal.Signals(signum).name)
            self.hard_stop.set()
        else:
            logger.info(
                "worker_stopping worker=%s signal=%s grace=%ss",
                self.id,
                signal.Signals(signum).name,
                self.config.grace,
            )
            self.stopping.set()
        self.wake.set()

    def lost(self) -> None:
        self.exit_code = EXIT_LOST
        self.stopping.set()
        self.hard_stop.set()
        self.wake.set()

    def orphaned(self) -> None:
        """The supervisor died: stop gracefully rather than run on unsupervised."""
        self.stopping.set()
        self.wake.set()

    def service_died(self, name: str) -> None:
        logger.error("worker_stopping worker=%s reason=%s_thread_died", self.id, name)
        self.exit_code = EXIT_SERVICE_DIED
        self.stopping.set()
        self.wake.set()
