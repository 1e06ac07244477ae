"""One worker process: its lifecycle. Rounds in the main thread, tasks in a pool of threads, and the
listener, heartbeat, reaper, stager and lease in threads of their own.

A supervisor's child leaves the reaper, stager and scheduler to its supervisor, and hears wake-ups
from it instead of LISTENing (workers.wakeups).

The main thread runs rounds (workers.completer over workers.producer): each records the tasks that
succeeded since the last one and claims for the free slots, in one round trip. Pool threads take
claimed rows from an inbox, run them, record failures themselves and hand successes back through the
ledger (workers.ledger, the one record of what this worker holds), waking the main thread.

Shutdown: the first SIGTERM/SIGINT stops claiming, hands back tasks claimed but not started, lets
running ones finish within the grace period, marks the worker STOPPED and exits 0. A second signal
(or the grace running out) takes the running tasks back through the failure path, attempt counted,
and exits 1. A worker that finds itself marked LOST exits 2; one whose heartbeat or listener thread
died exits 3. The stager (due SCHEDULED tasks to READY) and the scheduler (due ticks of schedules)
run in threads of their own too.

A worker whose lease runs out (no heartbeat reached the database within STALE_AFTER: workers.lease)
stops claiming and starting tasks, asks running ones to stop (queueapp.cancellation), gives them a
heartbeat interval at most, and exits 4 without another word to the database: the reaper has its
tasks, or will. Every connection it has is held to workers.db.ConnectionLimits, so a dead socket
errors instead of hanging.
"""

from __future__ import annotations

import contextlib
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
from django.db import connection
from django.tasks import task_backends

from queueapp import cancellation, conf, exceptions, store
from queueapp.backend import PostgresBackend
from queueapp.states import WorkerState
from workers import db
from workers.completer import Completer
from workers.config import WorkerConfig
from workers.executor import Executor, fail_attempt
from workers.exitcodes import ExitCode
from workers.heartbeat import Heartbeat
from workers.housekeeper import Housekept, for_services
from workers.lease import Lease
from workers.ledger import Ledger
from workers.listener import Listener, WorkerHearer
from workers.producer import Producer
from workers.reaper import Reaper
from workers.scheduler import Scheduler
from workers.services import Service, ServiceThread
from workers.stager import Stager
from workers.waiting import Waiting
from workers.wakeups import CHILD_POLL, SupervisorLine

logger = logging.getLogger(__name__)


LOOK_EVERY = 5.0
"""Seconds between a worker's looks at flow control when it does not LISTEN (TASKQUEUE["NOTIFY"] off,
or a supervisor's child, which is told of changes but looks now and then too): a flow-control change
of its queues stops its plain claim at once (the epoch fence), for this long."""


class Worker:
    def __init__(self, config: WorkerConfig, *, supervisor_line: socket.socket | None = None) -> None:
        """supervisor_line: this child's end of its socket pair to its supervisor (workers.wakeups),
        whose listener wakes it; without one, the worker LISTENs itself."""
        self.config = config
        self.id = config.worker_id
        backend = task_backends["default"]
        assert isinstance(backend, PostgresBackend)
        self.wake = threading.Event()
        self.stopping = threading.Event()  # first signal: stop claiming
        self.hard_stop = threading.Event()  # second signal, lost, or a dead service: stop now
        self.exit_code: ExitCode = ExitCode.OK
        self.limits = db.ConnectionLimits(config.stale_after)
        self.producer = Producer(worker_id=self.id, queues=config.queues, limits=self.limits.statements)
        self.executor = Executor(
            worker_id=self.id, backend=backend, give_up=self.hard_stop, breakers=self.producer.breakers
        )
        self.inbox: queue.SimpleQueue[store.TaskRow | None] = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self.run_tasks, name=f"taskqueue-task-{n}", daemon=True)
            for n in range(config.concurrency)
        ]
        self.ledger = Ledger(
            concurrency=config.concurrency, prefetch_max=config.prefetch_max, max_tasks=config.max_tasks
        )
        self.completer = Completer(
            worker_id=self.id,
            ledger=self.ledger,
            producer=self.producer,
            executor=self.executor,
            dispatch=self.dispatch,
        )
        self.waiting = Waiting(self.producer, enabled=conf.get().notify, poll_interval=config.poll_interval)
        self.services_stop = threading.Event()
        # How it hears of work: from its supervisor (workers.wakeups; a supervisor listens only while
        # TASKQUEUE["NOTIFY"] is on), from a listener of its own, or not at all (NOTIFY off: it polls).
        self.line: SupervisorLine | None = None
        self.listener: Listener | None = None
        if supervisor_line is not None:
            self.line = SupervisorLine(
                supervisor_line, wake=self.wake, look=self.producer.look_now, stop=self.services_stop
            )
        elif self.waiting.enabled:
            hearer = WorkerHearer(
                worker_id=self.id,
                queues=config.queues,
                wake=self.wake,
                on_settings=self.producer.settings_seen,
            )
            self.listener = Listener(
                db.listen_conninfo(self.limits),
                queues=config.queues,
                hearer=hearer,
                stop=self.services_stop,
                channel=store.wake_channel(self.id),
            )
        # No listener reads the settings for it: the producer does. A listener looks every few
        # seconds; should it stay disconnected, the producer looks after twice that.
        self.producer.look_every = LOOK_EVERY if self.listener is None else 2 * LOOK_EVERY
        # A supervised child's wake-up claims at once; its backstop look comes after the round.
        self.producer.look_first = self.line is None
        self.lease = Lease(duration=config.stale_after, on_expired=self.lease_expired)
        self.heartbeat = Heartbeat(
            self.id,
            on_lost=self.lost,
            parent_pid=config.parent_pid,
            on_orphaned=self.orphaned,
            lease=self.lease,
        )
        self.reaper = Reaper(
            stale_after=config.stale_after, backoff_base=config.backoff_base, backoff_max=config.backoff_max
        )
        self.housekeeper = for_services(self.id, config.stage_interval, config.schedule_interval)
        self.stager = Housekept(Stager(), self.housekeeper)
        self.scheduler = Housekept(Scheduler(grace=config.schedule_grace), self.housekeeper)

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        self.install_signal_handlers()
        self.limits.install()
        if self.config.metrics_port is not None:
            prometheus_client.start_http_server(self.config.metrics_port)
        if not self.register():
            logger.info("worker_exit worker=%s exit_code=0: stopped before it could register", self.id)
            return ExitCode.OK
        # The main thread's rounds run on the producer's session: its Django connection (used to
        # register, and by the session's one look for a pooler, done now) would idle until the
        # shutdown writes, which open a fresh one: a connection per process for nothing.
        db.unless_unreachable(store.prepared_statements, "pooler_check_failed worker=%s", self.id)
        connection.close()
        # Never touches the database: a hung socket cannot hold it. It looks when the lease would
        # run out (an idle worker's thread wakes once a lease, not twice a second).
        lease = ServiceThread(
            self.lease, interval=self.lease.next_check_in, stop=self.services_stop, on_crash=self.service_died
        )
        hearing = [
            ServiceThread(service, interval=0, stop=self.services_stop, on_crash=self.service_died)
            for service in (self.listener, self.line)
            if service is not None
        ]
        threads = [
            lease,
            *hearing,
            ServiceThread(
                self.heartbeat,
                interval=self.config.heartbeat_interval,
                stop=self.services_stop,
                on_crash=self.service_died,
                on_start=db.sends_heartbeats,  # its connection: a beat gives up within half the lease
            ),
            *self.housekeeping(),
        ]
        for thread in [*threads, *self.threads]:
            thread.start()
        try:
            self.loop()
            self.drain()
        finally:
            if self.lease.expired:
                lease.join()  # lease_expired ends the process, once running tasks had their chance
            self.services_stop.set()
            if self.line is not None:
                self.line.stop_hearing()  # its thread waits for the supervisor's word, not a timer
            for thread in threads:
                thread.join(5)
            if self.config.parent_pid is None:
                self.housekeeper.give_up()
            # Only now: a heartbeat after STOPPED would find no live row and take itself for LOST.
            # A LOST worker stays LOST (the statement matches nothing).
            self.safe_write(lambda: store.set_worker_state(self.id, WorkerState.STOPPED))
            if self.listener is not None:
                self.listener.close()
            self.producer.close()
            for _ in self.threads:
                self.inbox.put(None)  # a task thread still running a task is a daemon: not waited for
            connection.close()
        logger.info(
            "worker_exit worker=%s exit_code=%s tasks_done=%s",
            self.id,
            self.exit_code,
            self.ledger.done_count,
        )
        return self.exit_code

    def housekeeping(self) -> list[ServiceThread]:
        """The reaper, stager and scheduler, a thread (and a connection) each; the stager and the
        scheduler run only while this process is the fleet's housekeeper (workers.housekeeper). A
        supervisor's child leaves them to its supervisor (one connection for the host's children)."""
        if self.config.parent_pid is not None:
            return []
        services: list[tuple[Service, float]] = [
            (self.reaper, self.config.reap_interval),
            (self.stager, self.config.stage_interval),
            (self.scheduler, self.config.schedule_interval),
        ]
        return [
            ServiceThread(service, interval=interval, stop=self.services_stop, on_crash=self.service_died)
            for service, interval in services
        ]

    def register(self) -> bool:
        """Record this worker ALIVE, trying until the database answers; False if stopped first."""

        def register_once() -> float:
            sent_at = time.monotonic()
            store.register_worker(
                worker_id=self.id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=self.config.queues,
                concurrency=self.config.concurrency,
                wake_channel=self.wake_channel(),
            )
            return sent_at

        sent_at = db.retry_while_unreachable(
            register_once, until=self.stopping, event="register_failed worker=%s", fields=(self.id,)
        )
        if sent_at is None:
            return False
        self.lease.renew(sent_at)
        logger.info(
            "worker_started worker=%s pid=%s queues=%s concurrency=%s",
            self.id,
            os.getpid(),
            ",".join(self.config.queues),
            self.config.concurrency,
        )
        return True

    def wake_channel(self) -> str | None:
        """Where wake-ups naming this worker go: its supervisor's listener's channel, or its own
        listener's; None when it hears none (it polls, or its supervisor does not listen)."""
        if self.line is not None and self.config.listened_by is not None:
            return store.wake_channel(self.config.listened_by)
        return None if self.listener is None else self.listener.channel

    def loop(self) -> None:
        """A round whenever woken (a task done, NOTIFY) or when the poll timer fires."""
        while not self.stopping.is_set():
            self.wake.clear()
            done = self.ledger.done_count
            if self.config.max_tasks is not None and done >= self.config.max_tasks:
                logger.info("max_tasks_reached worker=%s tasks=%s", self.id, done)
                self.stopping.set()
                break
            claimed = self.round(claim=True)
            if self.config.burst and claimed == 0 and self.ledger.idle() and self.producer.healthy:
                logger.info("burst_done worker=%s: nothing ready", self.id)
                self.stopping.set()
                break
            self.wake.wait(self.next_round_in())

    def round(self, *, claim: bool) -> int:
        """Record the successes so far and (if claim) claim for the free slots; returns how many
        tasks were claimed."""
        if self.lease.expired:
            return 0  # written off: not another word to the database
        return self.completer.round(claim=claim)

    def dispatch(self, rows: list[store.TaskRow], claimed: list[store.TaskRow]) -> None:
        """Rows to run to the pool threads; claimed: every row the round claimed (those this worker
        runs already among them: a claim a crash undid, made again), for its supervisor's timeouts."""
        if self.config.parent_pid is not None and any(row.timeout is not None for row in claimed):
            with contextlib.suppress(ProcessLookupError):  # gone: the heartbeat sees to that
                os.kill(self.config.parent_pid, signal.SIGUSR1)  # its supervisor watches timeouts
        for row in rows:
            self.inbox.put(row)

    def next_round_in(self) -> float:
        """Seconds to wait for a wake-up before the next round (marking this worker waiting or not)."""
        if self.lease.expired:
            return self.poll_timeout()  # written off: not another word to the database
        if self.config.max_tasks is not None and self.ledger.done_count >= self.config.max_tasks:
            return 0.0  # its last task recorded: the loop stops now, not at the next poll
        after = self.waiting.after_round(free_slots=self.ledger.slots_left())
        if self.line is not None:
            self.line.tell(idle=self.waiting.marked)  # the supervisor wakes only children that wait
        return self.poll_timeout() if after is None else after

    def poll_timeout(self) -> float:
        if not self.producer.healthy:
            return min(self.config.poll_interval, 0.5)  # the database is away: retry soon
        interval = self.config.poll_interval
        if self.line is not None:  # its supervisor polls for it (workers.wakeups.ChildPoll): a backstop
            interval = max(interval, CHILD_POLL)
        poll = interval * random.uniform(0.8, 1.2)
        return min(poll, self.producer.retry_in) if self.producer.retry_in else poll

    def drain(self) -> None:
        """Finish or hand back what this worker holds (run() then records it STOPPED)."""
        self.safe_write(lambda: store.set_worker_state(self.id, WorkerState.STOPPING))
        self.release_unstarted()
        deadline = time.monotonic() + self.config.grace
        while not self.ledger.idle() and not self.hard_stop.is_set() and time.monotonic() < deadline:
            self.round(claim=False)
            self.wake.wait(0.1)
            self.wake.clear()
        self.round(claim=False)
        if self.ledger.running():
            self.interrupt_running()
            self.exit_code = self.exit_code or ExitCode.INTERRUPTED

    # -- tasks -----------------------------------------------------------------------------------

    def run_tasks(self) -> None:
        """A pool thread: run claimed rows from the inbox until handed None."""
        db.runs_tasks()
        while (row := self.inbox.get()) is not None:
            if not self.ledger.start():  # written off: the task may be running elsewhere already
                continue
            started = time.monotonic()
            try:
                attempt = self.executor.run(row)
            except Exception:
                # Left RUNNING under this worker: the reaper takes it back once the worker stops.
                logger.exception("executor_crashed id=%s: the task is reaped when this worker stops", row.id)
                attempt = None
            self.ledger.returned(row, attempt, time.monotonic() - started)
            self.wake.set()

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
        self.ledger.released(unstarted)
        logger.info("released_unstarted worker=%s tasks=%s", self.id, released)

    def interrupt_running(self) -> None:
        """Take running tasks back through the failure path (attempt counted): READY or FAILED."""
        for row in self.ledger.running():
            outcome = self.safe_write(
                functools.partial(
                    fail_attempt,
                    exceptions.WorkerInterrupted(f"worker {self.id} stopped during attempt {row.attempts}"),
                    task_id=row.id,
                    worker_id=self.id,
                    attempt=row.attempts,
                    backoff_base=self.config.backoff_base,
                    backoff_max=self.config.backoff_max,
                    breaker=row.queue_name in self.producer.breakers(),
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
        if self.lease.expired:
            return None  # written off: not another word to the database
        db.check_connection()  # idle since start-up: a restart since then left it dead
        return db.unless_unreachable(write, "shutdown_write_failed worker=%s", self.id)

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
        self.exit_code = ExitCode.LOST
        self.stopping.set()
        self.hard_stop.set()
        self.wake.set()

    def orphaned(self) -> None:
        """The supervisor died: stop gracefully rather than run on unsupervised."""
        self.stopping.set()
        self.wake.set()

    def service_died(self, name: str) -> None:
        logger.error("worker_stopping worker=%s reason=%s_thread_died", self.id, name)
        self.exit_code = ExitCode.SERVICE_DIED
        self.stopping.set()
        self.wake.set()

    def lease_expired(self) -> None:
        """The lease thread's last act: no heartbeat reached the database within STALE_AFTER, so a
        reaper may have given this worker's tasks to others already. Claim and start nothing more,
        ask running tasks to stop, and end the process with no further write (any other thread may be
        stuck on a socket that will never answer). Running tasks get a heartbeat interval (at most
        --grace) to return: enough for one that checks for a cancel, and not the full grace, since
        whatever a task does from now on may be done again by the worker that takes it over."""
        self.exit_code = ExitCode.LEASE_EXPIRED
        self.stopping.set()
        self.hard_stop.set()
        self.wake.set()
        running = self.ledger.close()
        cancellation.stop_all.set()
        abandoned = self.ledger.wait_for_running(min(self.config.grace, self.config.heartbeat_interval))
        logger.error(
            "worker_exit worker=%s exit_code=%s reason=lease_expired tasks_asked_to_stop=%s "
            "tasks_abandoned=%s tasks_done=%s",
            self.id,
            int(ExitCode.LEASE_EXPIRED),
            running,
            abandoned,
            self.ledger.done_count,
        )
        logging.shutdown()
        os._exit(ExitCode.LEASE_EXPIRED)
