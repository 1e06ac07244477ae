"""Supervisor for `runworker --processes N`: N worker processes, restarted when they die.

Children are forked from the supervisor, which has loaded Django (they start at once); with
--metrics-port they are started as fresh processes instead, since prometheus_client's multiprocess
mode must be chosen before the metrics are made.

It also enforces task timeouts, which threads cannot: a child running a task past its timeout is
killed, the task fails through the normal retry path, the child's other tasks are requeued as
"worker lost", and a fresh child takes its place. It asks the database about timeouts only while a
child runs a task that has one: a child that claims such a task tells it by SIGUSR1. A child that
dies on its own is reaped at once by the supervisor (its tasks do not wait for the heartbeat to go
stale). Every exit but 0 is followed by a fresh child, a child whose lease ran out (exit 4: cut off
from the database) too: it registers once the database answers again, and until then claims
nothing.

For its children it LISTENs (workers.wakeups: each wake-up to one idle child), polls (one probe per
poll interval while a child waits, instead of a claim per idle child), and runs the reaper, stager
and scheduler, all in its main loop and on one Django connection (two when LISTEN must go elsewhere
than DATABASE_URL: TASKQUEUE_LISTEN_DATABASE_URL); what is notified while housekeeping runs a query
waits in psycopg's backlog. A child has only its rounds' session and its heartbeat's connection. No
thread: a thread holding a lock at a fork would leave the child a lock nobody releases.

The loop sleeps until a service is due or something happens: a notification, a child's exit
(SIGCHLD), a signal to stop or of a timed task (each wakes it through signal.set_wakeup_fd). An idle
supervisor wakes for its services alone, and those due within half a second of each other run
together (workers.services.Rotation): a wake-up is not free (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from uuid import UUID, uuid4

import prometheus_client
from prometheus_client import multiprocess

from queueapp import conf, exceptions, store
from workers import db, wakeups
from workers.config import WorkerConfig
from workers.executor import fail_attempt
from workers.exitcodes import ExitCode
from workers.forked import ForkedWorker
from workers.housekeeper import Housekept, for_services
from workers.listener import IDLE_CHECK, Listener, drain
from workers.reaper import Reaper
from workers.scheduler import Scheduler
from workers.services import Rotation, Service
from workers.stager import Stager

logger = logging.getLogger(__name__)


@dataclass
class Child:
    worker_id: UUID
    process: subprocess.Popen[bytes] | ForkedWorker
    line: wakeups.ChildLine | None = None
    """The supervisor's end of the child's socket pair (forked children, when the supervisor listens)."""
    started: float = field(default_factory=time.monotonic)
    handled: bool = False
    """Its exit was seen and dealt with (reaped, replaced) before shutdown."""


class Supervisor:
    name = "supervisor"

    def __init__(self, config: WorkerConfig, *, check_interval: float = 0.5) -> None:
        self.config = config
        self.check_interval = check_interval
        self.children: list[Child] = []
        self.unreaped: set[UUID] = set()
        """Workers of children that died, whose tasks no reap has taken back yet (another reaper
        held the lock, or the database was away): tried again every pass, not left to STALE_AFTER."""
        self.stopping = threading.Event()
        self.signals = 0
        self.reaper = Reaper(
            stale_after=config.stale_after, backoff_base=config.backoff_base, backoff_max=config.backoff_max
        )
        # The children's housekeeping, once per host on the supervisor's one Django connection (a
        # child runs only its rounds and its heartbeat): reaping; staging due tasks and schedules
        # while this supervisor is the fleet's housekeeper (workers.housekeeper).
        self.housekeeper = for_services(config.worker_id, config.stage_interval, config.schedule_interval)
        services: list[tuple[Service, float]] = [
            (self.reaper, config.reap_interval),
            (Housekept(Stager(), self.housekeeper), config.stage_interval),
            (Housekept(Scheduler(grace=config.schedule_grace), self.housekeeper), config.schedule_interval),
        ]
        self.restart_delay = 0.0
        self.timed_tasks = threading.Event()
        """A child may be running a task with a timeout (SIGUSR1 says it claimed one)."""
        self.next_timeout_check = 0.0
        """time.monotonic() before which the timeouts are not asked about again: a child signals
        every round that claims a timed task, and each signal wakes the loop (at most one question
        per check_interval, however many signals)."""
        self.child_env = {**os.environ, "DJANGO_SETTINGS_MODULE": self.settings_module()}
        self.limits = db.ConnectionLimits(config.stale_after)
        # The main loop sleeps until a service is due, unless woken: every signal it handles (a
        # child's exit, stop, a timed task) writes a byte to waker (signal.set_wakeup_fd), which
        # makes woken readable for the loop's wait.
        self.woken, self.waker = socket.socketpair()
        for end in (self.woken, self.waker):
            end.setblocking(False)
        self.listener: Listener | None = None
        self.child_poll: wakeups.ChildPoll | None = None
        if conf.get().notify and config.metrics_port is None:
            # One LISTEN connection for all children, each wake-up to one of them (workers.wakeups),
            # and one poll for all of them. Children started as fresh processes (--metrics-port)
            # listen and poll for themselves.
            dispatcher = wakeups.Dispatcher(
                self.child_lines, queues=config.queues, on_missed=self.poll_children_soon
            )
            # On the housekeeping's Django connection (one connection for the host), unless LISTEN
            # must go elsewhere (TASKQUEUE_LISTEN_DATABASE_URL: DATABASE_URL is a pooler's).
            own = db.listen_conninfo(self.limits) if conf.get().listen_database_url else None
            self.listener = Listener(
                own,
                queues=config.queues,
                hearer=dispatcher,
                stop=self.stopping,
                channel=store.wake_channel(config.worker_id),
                interrupt=self.woken,
                # On the housekeeping's connection, the housekeeping's own statements (a try for the
                # row every few seconds at least) find it dead, and its reset makes the listener
                # LISTEN again: a check of its own would be one more statement for nothing.
                idle_check=math.inf if own is None else IDLE_CHECK,
            )
            # First in the rotation: a try for the housekeeping row due in the same pass comes with
            # its count, and the stager and scheduler after it find the row tried.
            self.child_poll = wakeups.ChildPoll(dispatcher, self.housekeeper)
            services.insert(0, (self.child_poll, config.poll_interval))
        self.housekeeping = Rotation(services)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.handle_signal)
        signal.signal(signal.SIGINT, self.handle_signal)
        signal.signal(signal.SIGUSR1, self.handle_timed_task)
        signal.signal(signal.SIGCHLD, self.handle_child_exit)
        signal.set_wakeup_fd(self.waker.fileno(), warn_on_full_buffer=False)
        self.limits.install()  # inherited by forked children
        with tempfile.TemporaryDirectory(prefix="taskqueue-metrics-") as metrics_dir:
            if self.config.metrics_port is not None:
                self.serve_metrics(metrics_dir)
            for _ in range(self.config.processes):
                self.children.append(self.spawn())
            try:
                while not self.stopping.is_set():
                    self.run_once()
                    if not self.stopping.is_set():  # a burst's last child exited: done, not a wait more
                        self.listen(self.next_pass_in(self.housekeeping.run_due()))
            finally:
                self.housekeeper.give_up()
                if self.listener is not None:
                    self.listener.close()
            return self.wait_for_children()

    def next_pass_in(self, housekeeping_due: float) -> float:
        """Seconds the loop may sleep: until a service is due, or sooner while it asks the database
        again (the next timeout check, while a child may run a task with a timeout; check_interval,
        while a dead child's tasks are not reaped yet). A child's exit and signals wake it sooner
        (self.woken)."""
        due = housekeeping_due
        if self.timed_tasks.is_set():
            due = min(due, max(self.next_timeout_check - time.monotonic(), 0.0))
        if self.unreaped:
            due = min(due, self.check_interval)
        return due

    def listen(self, timeout: float) -> None:
        """Wait for timeout, or until woken: listening for the children, when this supervisor listens
        (in this thread: a supervisor with threads could fork a child holding a lock one of them held)."""
        if self.listener is not None:
            self.listener.run_once(timeout=timeout)
        elif select.select([self.woken], [], [], timeout)[0]:
            drain(self.woken)

    def poll_children_soon(self) -> None:
        """Notifications may have been missed: poll for the children on the next pass, at once (the
        listener calls this from within its wait, which the byte on woken ends)."""
        if self.child_poll is not None:
            self.housekeeping.hurry(self.child_poll)
            with contextlib.suppress(OSError):  # full of wake-ups already: the wait ends anyway
                self.waker.send(b"p")

    def child_lines(self) -> dict[UUID, wakeups.ChildLine]:
        return {
            child.worker_id: child.line
            for child in self.children
            if child.line is not None and not child.handled
        }

    def serve_metrics(self, metrics_dir: str) -> None:
        """Children write their counters to metrics_dir; this process serves their sum."""
        self.child_env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
        assert self.config.metrics_port is not None
        prometheus_client.start_http_server(self.config.metrics_port, registry=registry)

    def spawn(self) -> Child:
        worker_id = uuid4()
        process: subprocess.Popen[bytes] | ForkedWorker
        line: wakeups.ChildLine | None = None
        if self.config.metrics_port is None:
            child = dataclasses.replace(
                self.config,
                processes=1,
                worker_id=worker_id,
                parent_pid=os.getpid(),
                metrics_port=None,
                listened_by=None if self.listener is None else self.config.worker_id,
            )
            # The child closes the supervisor's ends of every socket pair (its own line's included).
            wakeup = [self.woken, self.waker]
            if self.listener is None:
                process = ForkedWorker(child, supervisor_ends=wakeup)
            else:
                ours, theirs = socket.socketpair()
                ends = [c.line.sock for c in self.children if c.line is not None]
                process = ForkedWorker(child, line=theirs, supervisor_ends=[*ends, ours, *wakeup])
                theirs.close()
                line = wakeups.ChildLine(ours)
        else:
            args = self.config.child_args(worker_id=worker_id, parent_pid=os.getpid())
            cmd = [sys.executable, "-m", "django", "runworker", *args]
            # A process group of its own: a terminal's Ctrl+C reaches only the supervisor, which
            # forwards it once (a child that saw it twice would take it as "stop now").
            process = subprocess.Popen(cmd, env=self.child_env, process_group=0)
        logger.info("child_started pid=%s worker=%s", process.pid, worker_id)
        if self.stopping.is_set():  # a signal arrived while it was starting
            process.send_signal(signal.SIGTERM)
        return Child(worker_id, process, line)

    @staticmethod
    def settings_module() -> str:
        from django.conf import settings

        return str(settings.SETTINGS_MODULE)

    def run_once(self) -> None:
        """Restart dead children (reaping their tasks first) and kill those past a task's timeout."""
        self.kill_timed_out()
        self.reap_dead()
        for index, child in enumerate(self.children):
            code = child.process.poll()
            if code is None or child.handled:
                continue
            child.handled = True
            recycled = code == 0
            logger.log(
                logging.INFO if recycled else logging.ERROR,
                "child_exited pid=%s worker=%s exit_code=%s reason=%s",
                child.process.pid,
                child.worker_id,
                code,
                ExitCode.describe(code),
            )
            if not recycled:
                self.unreaped.add(child.worker_id)
                self.reap_dead()
                # A child that keeps dying right after start is throttled, not spun.
                short_lived = time.monotonic() - child.started < 5
                self.restart_delay = min(max(self.restart_delay * 2, 0.5), 10.0) if short_lived else 0.0
                self.stopping.wait(self.restart_delay)
            if child.line is not None:
                child.line.close()
            if self.stopping.is_set() or (self.config.burst and recycled):
                continue
            self.children[index] = self.spawn()
        if self.config.burst and all(child.process.poll() == 0 for child in self.children):
            self.stopping.set()

    def reap_dead(self) -> None:
        if self.unreaped:
            outcome = self.reaper.run_once(worker_ids=sorted(self.unreaped))
            if outcome is not None and outcome.ran:
                self.unreaped.clear()

    def kill_timed_out(self) -> None:
        if not self.timed_tasks.is_set():
            return  # no child has claimed a task with a timeout since none was found running
        if time.monotonic() < self.next_timeout_check:
            return  # asked less than check_interval ago (next_pass_in wakes the loop for the next)
        self.next_timeout_check = time.monotonic() + self.check_interval
        self.timed_tasks.clear()  # first: a SIGUSR1 during the query sets it again
        alive = {child.worker_id: child for child in self.children if child.process.poll() is None}
        timed = db.unless_unreachable(lambda: store.timed_tasks(list(alive)), "timeout_check_failed")
        if timed is None or timed:
            self.timed_tasks.set()  # ask again next pass
        for task_id, worker_id, attempt, timeout, late in timed or []:
            child = alive.get(worker_id)
            if not late or child is None or child.process.poll() is not None:
                continue
            logger.error(
                "task_timeout id=%s attempt=%s timeout=%ss: killing pid=%s",
                task_id,
                attempt,
                timeout,
                child.process.pid,
            )
            child.process.kill()
            child.process.wait()
            # Unrecorded, the next pass reaps the dead child: the task is retried as "worker lost".
            db.unless_unreachable(
                functools.partial(
                    fail_attempt,
                    exceptions.TaskTimeout(f"attempt {attempt} ran past its timeout of {timeout} s"),
                    task_id=task_id,
                    worker_id=worker_id,
                    attempt=attempt,
                    backoff_base=self.config.backoff_base,
                    backoff_max=self.config.backoff_max,
                    # The supervisor has no flow view: count_breaker_failure looks at the settings
                    # (a transaction and a statement more, for a timeout: rare).
                    breaker=True,
                ),
                "timeout_record_failed id=%s",
                task_id,
            )
            # Its other tasks, then a fresh child, on the next pass.

    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        logger.info("supervisor_stopping signal=%s count=%s", signal.Signals(signum).name, self.signals)
        self.stopping.set()
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signum)

    def handle_timed_task(self, signum: int, frame: FrameType | None) -> None:
        self.timed_tasks.set()

    def handle_child_exit(self, signum: int, frame: FrameType | None) -> None:
        """Nothing to do here: the signal's byte on the wakeup fd wakes the loop, whose next pass
        reaps the child and starts another."""

    def wait_for_children(self) -> int:
        codes = [child.process.wait() for child in self.children if not child.handled]
        logger.info("supervisor_exit exit_codes=%s", codes)
        # A child still starting up when the signal came dies of it before it can claim anything.
        clean = {0, -signal.SIGTERM, -signal.SIGINT}
        return max((abs(code) for code in codes if code not in clean), default=0)
