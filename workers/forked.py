"""A worker process forked from its supervisor, which has loaded Django already.

A child started as a fresh interpreter spends over a second importing Django, the project and
psycopg before it claims anything; a forked one starts at once and shares those pages with its
supervisor until it writes to them. Its interface is the part of subprocess.Popen the supervisor
uses (pid, poll, wait, kill, send_signal).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
from collections.abc import Sequence

from django.db import connections

from workers.config import WorkerConfig

logger = logging.getLogger(__name__)

EXIT_CRASHED = 70

_HELD = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
"""The signals the supervisor handles, held back while it forks."""

_INHERITED: list[object] = []
"""The supervisor's connections a forked child inherited: never used, never freed (os._exit)."""


def freeze_for_fork() -> None:
    """Freeze the supervisor's objects for the garbage collector before a fork. A collection writes to
    every object it scans: a child's first full collection scanned all it shares with the supervisor
    (all of Django) and copied about 19 MiB of shared pages, in each child and for good. Frozen
    objects are never scanned again, in either process. At the first fork they are what start-up
    made; at a later one (a child restarted) the garbage since is collected first, so that none is
    frozen for the supervisor's lifetime (the collection scans only what the last freeze left)."""
    if gc.get_freeze_count():
        gc.collect()
    gc.freeze()


class ForkedWorker:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        line: socket.socket | None = None,
        supervisor_ends: Sequence[socket.socket] = (),
    ) -> None:
        """line: the child's end of its socket pair to the supervisor (workers.wakeups);
        supervisor_ends: the supervisor's ends of every pair, closed in the child."""
        # The supervisor's signals wait while it forks: from the fork until the child sets its own
        # handlers (at-fork hooks run first), a signal would run the supervisor's handler in the
        # child, which then forgot it. Pending, the child's comes under its default handler, the
        # supervisor's once the fork returned (spawn() then signals the new child as well).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        freeze_for_fork()
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no branch - the child never returns from here
                self._run_child(config, line, supervisor_ends, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.pid = pid
        self.returncode: int | None = None

    @staticmethod
    def _abandon_inherited_connections() -> None:
        """The child must never use the supervisor's database sockets, nor close them: closing sends
        the server a Terminate that ends the supervisor's session (its LISTEN and housekeeping).
        Django forgets them (the child opens its own), and they are kept referenced until os._exit
        so that no finaliser closes them; the supervisor's connection stays as it was."""
        for connection in connections.all(initialized_only=True):
            if connection.connection is not None:
                _INHERITED.append(connection.connection)
                connection.connection = None

    @classmethod
    def _run_child(
        cls,
        config: WorkerConfig,
        line: socket.socket | None,
        supervisor_ends: Sequence[socket.socket],
        mask: set[int | signal.Signals],
    ) -> None:
        code = EXIT_CRASHED
        try:  # whatever happens in the child ends in os._exit: it never runs the supervisor's code
            # The default signal handlers until the worker sets its own (the supervisor's would act
            # on its children), and a process group of its own (a terminal's Ctrl+C reaches only the
            # supervisor, which forwards it once).
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the supervisor's word (a timed task), not ours
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)  # the supervisor's loop is woken by its signals, not by ours
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGTERM that came meanwhile: exit now
            os.setpgid(0, 0)
            for end in supervisor_ends:
                end.close()
            cls._abandon_inherited_connections()
            from workers.worker import Worker

            code = Worker(config, supervisor_line=line).run()
        except BaseException:
            logger.exception("worker_crashed worker=%s", config.worker_id)
        finally:
            logging.shutdown()
            os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
