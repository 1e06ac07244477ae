"""Wake one, not all: a supervisor's one listener hands each wake-up to one idle child.

Each child has a socket pair to its supervisor (made before the fork). The supervisor sends WAKE
(claim now) or LOOK (flow settings changed: look at them, then claim); the child says IDLE when it
marked itself waiting (workers.waiting) and BUSY when it cleared the mark, and again after every
wake-up, since the supervisor takes a child it woke for busy until it hears otherwise. The poll
stays the backstop, made once per host by the supervisor (ChildPoll) while a child waits: a wake-up
that finds nobody idle, or that is lost with a dying worker, is a poll interval late at worst,
never lost.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import socket
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any
from uuid import UUID

import psycopg

from queueapp import store
from workers import db
from workers.housekeeper import Housekeeping

logger = logging.getLogger(__name__)

WAKE = b"w"
LOOK = b"s"
IDLE = b"i"
BUSY = b"b"


class ChildLine:
    """The supervisor's end of one child's socket pair: what the child last said, and wake-ups to it."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.idle = False

    def hear(self) -> None:
        """Read what the child said since the last time: its last word is its state."""
        try:
            while said := self.sock.recv(256):
                self.idle = said[-1:] == IDLE
        except BlockingIOError:
            return  # all read: the child's last word stands
        except OSError:  # reset: the child is gone, as at EOF
            pass
        self.idle = False  # gone (EOF or error): nobody to wake

    def send(self, message: bytes) -> None:
        try:
            self.sock.send(message)
        except OSError:  # gone, or its buffer full of wake-ups it has yet to read: it will round anyway
            logger.debug("wake_not_sent message=%r", message, exc_info=True)
        if WAKE in message or LOOK in message:
            self.idle = False  # until it says otherwise (after its round)

    def close(self) -> None:
        self.sock.close()


class Dispatcher:
    """The supervisor's listener hearer (workers.listener.Hearer): a named wake-up goes to the named
    child when ours, or to another idle child of ours when that one is busy; an unnamed one (a resumed
    queue) to every idle child; settings changes to every child; missed notifications make the
    supervisor poll for its children at once (ChildPoll), not wake them all."""

    def __init__(
        self,
        lines: Callable[[], Mapping[UUID, ChildLine]],
        *,
        queues: Collection[str],
        on_missed: Callable[[], None],
    ) -> None:
        self.lines = lines
        self.queues = frozenset(queues)
        self.flow_queues: frozenset[str] = frozenset()
        """Those of its queues under flow control, as the listener last looked: their READY tasks
        may be held back (ChildPoll wakes one child for them, not one per task)."""
        self.on_missed = on_missed
        """Notifications may have been missed (the listener connected, or lost its connection): the
        supervisor polls for its children at once (ChildPoll), instead of waking every child."""
        self.turn = itertools.count()

    def settings_changed(self, conn: psycopg.Connection[Any]) -> None:
        self.flow_queues = store.flow_view(conn, self.queues).queues
        for line in self.lines().values():
            line.send(LOOK)

    def heard(self) -> Mapping[UUID, ChildLine]:
        """The children's lines, each with what its child last said."""
        lines = self.lines()
        for line in lines.values():
            line.hear()
        return lines

    def enqueued(self, wake: store.Wake) -> None:
        lines = self.heard()
        if wake.named is None:
            for line in lines.values():
                if line.idle:
                    line.send(WAKE)
            return
        named = lines.get(wake.named)
        if named is None:
            return  # another supervisor's, or a lone worker's
        if not named.idle:
            # Busy (or its word is on the way): an idle sibling claims instead, else the named one,
            # which may be idle after all (it said so to the database before it says so to us).
            named = self.one_idle(lines) or named
        named.send(WAKE)

    def one_idle(self, lines: Mapping[UUID, ChildLine]) -> ChildLine | None:
        """An idle child's line, in turn, or None when every child is busy."""
        idle = self.idle_lines(lines)
        return idle[0] if idle else None

    def idle_lines(self, lines: Mapping[UUID, ChildLine]) -> list[ChildLine]:
        """The idle children's lines, starting at the next one in turn."""
        idle = [line for line in lines.values() if line.idle]
        start = next(self.turn) % len(idle) if idle else 0
        return idle[start:] + idle[:start]

    def missed(self) -> None:
        self.on_missed()

    def idle(self, conn: psycopg.Connection[Any]) -> None:
        store.check_listener(conn)


class ChildPoll:
    """The poll, once per host instead of once per child: while children of the supervisor wait for
    work, every poll interval (and at once after notifications may have been missed), how many tasks
    of the supervisor's queues are READY, up to the number of waiting children? That many are woken
    to claim. It finds the tasks whose wake-up was lost (it named a worker that died before its
    heartbeat went stale, or came while the listener reconnected) or held back (a flow-controlled
    queue): claims that every idle child made on its own poll before, one probe of the READY index
    now. Its children poll only as a last backstop (CHILD_POLL)."""

    name = "child_poll"

    def __init__(self, dispatcher: Dispatcher, housekeeping: Housekeeping | None = None) -> None:
        self.dispatcher = dispatcher
        self.housekeeping = housekeeping
        """The supervisor's: when its try for the housekeeping row is due, the count comes with it
        (one statement for both, the one an idle supervisor makes every poll interval)."""

    def run_once(self) -> int | None:
        """How many waiting children were woken; None when the database could not be reached."""
        idle = self.dispatcher.idle_lines(self.dispatcher.heard())
        if not idle:
            return 0  # every child busy: each claims again when a task of its ends
        ready = db.unless_unreachable(lambda: self.wanted(len(idle)), "child_poll_failed")
        for line in idle[: ready or 0]:
            line.send(WAKE)
        return ready

    def wanted(self, idle: int) -> int | None:
        """Children to wake: one per READY task of the queues without flow control, and one more
        for those with it (a paused or limited queue's backlog is not a child's worth per task)."""
        flow = self.dispatcher.flow_queues
        plain = sorted(self.dispatcher.queues - flow)
        if self.housekeeping is not None and self.housekeeping.try_due():
            counted = self.housekeeping.try_counting(plain, idle)
            if counted is None:
                return None  # the database is away (logged by the try): as for a failed count
            ready = counted
        else:
            ready = store.count_ready(plain, cap=idle) if plain else 0
        if ready < idle and flow:
            ready += store.count_ready(sorted(flow), cap=1)
        return ready


CHILD_POLL = 60.0
"""Seconds between a supervised child's own polls (or its poll interval, if longer): its supervisor
listens and polls for it (ChildPoll), this is a backstop for a supervisor whose loop is held up."""


class SupervisorLine:
    """A child's end of its socket pair: a service (run in a thread of its own) that wakes the child's
    rounds when told, and the child's word to its supervisor on whether it waits for work."""

    name = "wakeups"

    def __init__(
        self, sock: socket.socket, *, wake: threading.Event, look: threading.Event, stop: threading.Event
    ) -> None:
        self.sock = sock
        self.wake = wake
        self.look = look
        self.stop = stop
        self.lock = threading.Lock()
        self.told: bool | None = None
        """What the supervisor last heard from us (None: it woke us, and takes us for busy)."""

    def run_once(self, timeout: float = 30.0) -> None:
        """Wait for the supervisor's word (stop_hearing ends the wait at once)."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return
        heard = self.sock.recv(256)
        if not heard:  # the supervisor is gone: the heartbeat sees to that (orphaned); poll meanwhile
            self.stop.wait(1.0)
            return
        with self.lock:
            self.told = None
        if LOOK in heard:
            self.look.set()  # before the wake: the round looks at the settings, then claims
        self.wake.set()

    def stop_hearing(self) -> None:
        """The worker is stopping: the thread that waits in run_once hears the end of the line now
        (telling the supervisor stays possible)."""
        with contextlib.suppress(OSError):  # closed already
            self.sock.shutdown(socket.SHUT_RD)

    def tell(self, *, idle: bool) -> None:
        with self.lock:
            if idle is self.told:
                return
            self.told = idle
            try:
                self.sock.send(IDLE if idle else BUSY)
            except OSError:
                logger.debug("state_not_sent idle=%s", idle, exc_info=True)

    def close(self) -> None:
        self.sock.close()
