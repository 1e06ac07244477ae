"""A worker process forked from its supervisor, which has loaded Django already.

A child started as a fresh interpreter spends over a second importing Django, the project and
psycopg before it claims anything; a forked one starts at once and shares those pages with its
supervisor until it writes to them. Its interface is the part of subprocess.Popen the supervisor
uses (pid, poll, wait, kill, send_signal).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Sequence

from django.db import connections

from workers.config import WorkerConfig

logger = logging.getLogger(__name__)

EXIT_CRASHED = 70


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
        # The child must never share the supervisor's database sockets: close them (the supervisor
        # reconnects when it next needs to). The supervisor's listener connection is not Django's:
        # the child inherits its socket but never touches it, and never frees it (os._exit).
        connections.close_all()
        pid = os.fork()
        if pid == 0:  # pragma: no branch - the child never returns from here
            for end in supervisor_ends:
                end.close()
            self._run_child(config, line)
        self.pid = pid
        self.returncode: int | None = None

    @staticmethod
    def _run_child(config: WorkerConfig, line: socket.socket | None) -> None:
        code = EXIT_CRASHED
        try:
            # A process group of its own (a terminal's Ctrl+C reaches only the supervisor, which
            # forwards it once), and the default signal handlers until the worker sets its own.
            os.setpgid(0, 0)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
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
