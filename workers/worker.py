"""One worker process: rounds in the main thread, tasks in a pool of threads, and the listener,
heartbeat and reaper in threads of their own.

The main thread runs rounds (workers.producer): each records the tasks that succeeded since the
last one and claims for the free slots, in one round trip. Pool threads take claimed rows from an
inbox, run them, record failures themselves and hand successes back, waking the main thread.

Shutdown: the first SIGTERM/SIGINT stops claiming, hands back tasks claimed but not started, lets
running ones finish within the grace period, marks the worker STOPPED and exits 0. A second signal
(or the grace running out) takes the running tasks back through the failure path, attempt counted,
and exits 1. A worker that finds itself marked LOST exits 2; one whose heartbeat or listener thread
died exits 3. The stager (due SCHEDULED tasks to READY) runs in a thread of its own too.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType

import prometheus_client
import psycopg
from django.db import connection
from django.tasks import task_backends

from queueapp import exceptions, store
from queueapp.backend import PostgresBackend
from workers import db
from workers.config import WorkerConfig
from workers.executor import Attempt, Executor, fail_attempt
from workers.heartbeat import Heartbeat
from workers.listener import Listener
from workers.producer import Producer
from workers.reaper import Reaper
from workers.services import ServiceThread
from workers.stager import Stager

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_INTERRUPTED, EXIT_LOST, EXIT_SERVICE_DIED = 0, 1, 2, 3

CLAIM_AHEAD_WINDOW = 0.1
"""Seconds of work a worker claims ahead of its threads: as many tasks as they run in that time on
average (at most --prefetch), so that a task waits in the worker about this long at worst."""


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
        self.inbox: queue.SimpleQueue[store.TaskRow | None] = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self.run_tasks, name=f"taskqueue-task-{n}", daemon=True)
            for n in range(config.concurrency)
        ]
        self.lock = threading.Lock()
        self.held: dict[int, store.TaskRow] = {}
        """Claimed and not yet recorded: waiting in the inbox, running, or succeeded (below)."""
        self.succeeded: list[Attempt] = []
        """Run to success, to be recorded by the next round."""
        self.uncertain = False
        """A round failed for want of the database: it may have committed all the same."""
        self.done_count = 0
        self.average_run: float | None = None
        """Moving average of task run times (seconds): tasks are claimed ahead only while it is short."""
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
        self.stager = Stager()

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
            ServiceThread(
                self.stager,
                interval=self.config.stage_interval,
                stop=self.services_stop,
                on_crash=self.service_died,
            ),
        ]
        for thread in [*threads, *self.threads]:
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
            self.producer.close()
            for _ in self.threads:
                self.inbox.put(None)  # a task thread still running a task is a daemon: not waited for
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
        """A round whenever woken (a task done, NOTIFY) or when the poll timer fires."""
        while not self.stopping.is_set():
            self.wake.clear()
            if self.config.max_tasks is not None and self.done_count >= self.config.max_tasks:
                logger.info("max_tasks_reached worker=%s tasks=%s", self.id, self.done_count)
                self.stopping.set()
                break
            claimed = self.round(claim=True)
            if self.config.burst and claimed == 0 and self.idle() and self.producer.healthy:
                logger.info("burst_done worker=%s: nothing ready", self.id)
                self.stopping.set()
                break
            self.wake.wait(self.poll_timeout())

    def round(self, *, claim: bool) -> int:
        """Record the successes so far and (if claim) claim for the free slots; returns how many
        tasks were claimed."""
        if self.uncertain and not self.reconcile():
            return 0
        with self.lock:
            attempts, self.succeeded = self.succeeded, []
            limit = self.free_slots(recording=len(attempts)) if claim else 0
        if not attempts and not limit:
            return 0
        successes = [attempt.success for attempt in attempts if attempt.success is not None]
        try:
            done = self.producer.run_once(limit, successes)
        except psycopg.Error as exc:  # refused, not unreachable: find the success it cannot hold
            if not successes:
                raise
            logger.warning("round_refused error=%s: recording %s successes one by one", exc, len(successes))
            for attempt in attempts:
                self.executor.record_alone(attempt)
            done = self.producer.run_once(limit)  # the claim that round did not make
        if done is None:  # the database is away: what is not recorded yet goes in the next round
            self.uncertain = True
            with self.lock:
                self.succeeded[:0] = [attempt for attempt in attempts if attempt.outcome is None]
                self.forget([attempt for attempt in attempts if attempt.outcome is not None])
            return 0
        statuses, rows = done
        with self.lock:
            self.forget(attempts)
            for row in rows:
                self.held[row.id] = row
        for row in rows:
            self.inbox.put(row)
        for attempt in attempts:
            if attempt.outcome is None:
                self.executor.complete(attempt, statuses.get(attempt.row.id))
        return len(rows)

    def reconcile(self) -> bool:
        """After a failed round, before the next: that round's COMMIT may have gone through with only
        its answer lost. Its claims (RUNNING under this worker, unknown here) are released; its
        successes that were recorded are reported as such, not sent again. False if still away."""
        with self.lock:
            held = list(self.held)
            pending = list(self.succeeded)
        found = self.producer.reconcile(held, [attempt.success for attempt in pending if attempt.success])
        if found is None:
            return False
        released, statuses = found
        recorded = [attempt for attempt in pending if attempt.row.id in statuses]
        with self.lock:
            self.succeeded = [attempt for attempt in self.succeeded if attempt.row.id not in statuses]
            self.forget(recorded)
        for attempt in recorded:
            self.executor.complete(attempt, statuses[attempt.row.id])
        if released or recorded:
            logger.warning(
                "round_reconciled worker=%s released=%s recorded=%s: the failed round had committed",
                self.id,
                len(released),
                len(recorded),
            )
        self.uncertain = False
        return True

    def forget(self, attempts: list[Attempt]) -> None:
        """Recorded attempts free their slots (call with the lock held)."""
        for attempt in attempts:
            del self.held[attempt.row.id]
        self.done_count += len(attempts)

    def poll_timeout(self) -> float:
        if not self.producer.healthy:
            return min(self.config.poll_interval, 0.5)  # the database is away: retry soon
        return self.config.poll_interval * random.uniform(0.8, 1.2)

    def drain(self) -> None:
        """Finish or hand back what this worker holds (run() then records it STOPPED)."""
        self.safe_write(lambda: store.set_worker_state(self.id, "STOPPING"))
        self.release_unstarted()
        deadline = time.monotonic() + self.config.grace
        while self.held and not self.hard_stop.is_set() and time.monotonic() < deadline:
            self.round(claim=False)
            self.wake.wait(0.1)
            self.wake.clear()
        self.round(claim=False)
        if self.running():
            self.interrupt_running()
            self.exit_code = self.exit_code or EXIT_INTERRUPTED

    # -- tasks -----------------------------------------------------------------------------------

    def run_tasks(self) -> None:
        """A pool thread: run claimed rows from the inbox until handed None."""
        while (row := self.inbox.get()) is not None:
            started = time.monotonic()
            try:
                attempt = self.executor.run(row)
            except Exception:
                logger.exception("executor_crashed id=%s: the reaper will requeue the task", row.id)
                attempt = None
            ran = time.monotonic() - started
            with self.lock:
                average = self.average_run
                self.average_run = ran if average is None else average + (ran - average) * 0.1
                if attempt is not None and attempt.success is not None:
                    self.succeeded.append(attempt)
                else:  # recorded already (a failure), or lost to a bug
                    self.held.pop(row.id, None)
                    self.done_count += 1
            self.wake.set()

    def free_slots(self, *, recording: int = 0) -> int:
        """Slots free once `recording` succeeded tasks are recorded (call with the lock held).

        While tasks are short, the worker also claims tasks beyond its threads (claim_ahead): they
        wait in the inbox (RUNNING under this worker, fenced like the others, handed back at
        shutdown, requeued by the reaper if the worker dies) so that a thread that finishes finds its
        next task at once instead of waiting a round trip, and a round carries more tasks.
        """
        held = len(self.held) - recording
        free = self.config.concurrency + self.claim_ahead() - held
        if self.config.max_tasks is not None:  # never claim past --max-tasks
            free = min(free, self.config.max_tasks - (self.done_count + recording) - held)
        return max(free, 0)

    def claim_ahead(self) -> int:
        """Tasks to claim beyond the threads: what they run in CLAIM_AHEAD_WINDOW on average, at most
        --prefetch; none until a task has run (its length is unknown), none for long tasks, so a
        task never waits behind one that runs for minutes while another worker is idle."""
        if not self.average_run:
            return 0
        ahead = int(self.config.concurrency * CLAIM_AHEAD_WINDOW / self.average_run)
        return min(ahead, self.config.prefetch_max)

    def idle(self) -> bool:
        with self.lock:
            return not self.held

    def running(self) -> list[store.TaskRow]:
        with self.lock:
            recording = {attempt.row.id for attempt in self.succeeded}
            return [row for task_id, row in self.held.items() if task_id not in recording]

    def release_unstarted(self) -> None:
        unstarted = []
        while True:
            try:
                row = self.inbox.get_nowait()
            except queue.Empty:
                break
            if row is not None:
                unstarted.append(row)
        if not unstarted:
            return
        released = self.safe_write(
            lambda: store.release_tasks(
                worker_id=self.id, claimed=[(row.id, row.attempts) for row in unstarted]
            )
        )
        with self.lock:
            for row in unstarted:
                del self.held[row.id]
        logger.info("released_unstarted worker=%s tasks=%s", self.id, released)

    def interrupt_running(self) -> None:
        """Take running tasks back through the failure path (attempt counted): READY or FAILED."""
        for row in self.running():
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
