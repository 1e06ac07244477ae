"""Ledger: what one worker process holds, behind one lock.

A claimed task enters the ledger with its claim and leaves it when its outcome is recorded. In between
it waits in the inbox, runs in a pool thread, or has succeeded and waits for the next round to record
it. Pool threads and the main thread change the ledger only through these methods, under its lock; an
Attempt belongs to its pool thread until handed over (returned()), then to the main thread (the
completer), and the ledger is how it passes from one to the other.
"""

from __future__ import annotations

import threading

from queueapp import store
from workers.executor import Attempt

CLAIM_AHEAD_WINDOW = 0.1
"""Seconds of work a worker claims ahead of its threads: as many tasks as they run in that time on
average (at most --prefetch), so that a task waits in the worker about this long at worst."""


class Ledger:
    def __init__(self, *, concurrency: int, prefetch_max: int, max_tasks: int | None) -> None:
        self.concurrency = concurrency
        self.prefetch_max = prefetch_max
        self.max_tasks = max_tasks
        self.lock = threading.Lock()
        self.task_returned = threading.Condition(self.lock)
        self.held: dict[int, store.TaskRow] = {}
        """Claimed and not yet recorded: waiting in the inbox, running, or succeeded (below)."""
        self.succeeded: list[Attempt] = []
        """Run to success, to be recorded by the next round."""
        self.executing = 0
        """Tasks running in the pool threads right now."""
        self.done_count = 0
        self.average_run: float | None = None
        """Moving average of task run times (seconds): tasks are claimed ahead only while it is short."""
        self.closed = False
        """Set when the worker was written off (its lease ran out): no task starts any more."""

    # -- pool threads ----------------------------------------------------------------------------

    def start(self) -> bool:
        """A pool thread is about to run a claimed task; False: it must not (the worker was written off)."""
        with self.lock:
            if self.closed:
                return False
            self.executing += 1
            return True

    def returned(self, row: store.TaskRow, attempt: Attempt | None, ran: float) -> None:
        """A task returned after ran seconds: a success waits for the next round; a failure (already
        recorded) or a crash of the executor (None: reaped once the worker stops) frees its slot now."""
        with self.lock:
            self.executing -= 1
            average = self.average_run
            self.average_run = ran if average is None else average + (ran - average) * 0.1
            if attempt is not None and attempt.success is not None:
                self.succeeded.append(attempt)
            else:
                self.held.pop(row.id, None)
                self.done_count += 1
            self.task_returned.notify_all()

    # -- the main thread -------------------------------------------------------------------------

    def claimed(self, rows: list[store.TaskRow]) -> tuple[list[store.TaskRow], list[store.TaskRow]]:
        """Hold the claimed rows: (those to run, those to hand back). A row this worker holds already
        is a claim a database crash undid (a round that only claims does not wait for a flush) and
        this worker made again: of the same attempt, the claim of the run under way, which records
        it; of another (the task ran and failed elsewhere meanwhile), one to hand back."""
        with self.lock:
            fresh = [row for row in rows if row.id not in self.held]
            held = self.held
            again = [row for row in rows if row.id in held and row.attempts != held[row.id].attempts]
            for row in fresh:
                self.held[row.id] = row
        return fresh, again

    def take_successes(self, *, claim: bool) -> tuple[list[Attempt], int]:
        """The successes to record in a round, and how many tasks it may claim (0 unless claim)."""
        with self.lock:
            attempts, self.succeeded = self.succeeded, []
            return attempts, self.free_slots(recording=len(attempts)) if claim else 0

    def put_back(self, attempts: list[Attempt]) -> None:
        """Successes a round could not record (the database was away): first in the next round."""
        with self.lock:
            self.succeeded[:0] = attempts

    def recorded(self, attempts: list[Attempt]) -> None:
        """Recorded attempts (or dropped ones: taken away) free their slots."""
        with self.lock:
            for attempt in attempts:
                del self.held[attempt.row.id]
            self.done_count += len(attempts)

    def recorded_meanwhile(self, task_ids: set[int]) -> list[Attempt]:
        """Take out the waiting successes of these tasks (a lost round recorded them after all)."""
        with self.lock:
            found = [attempt for attempt in self.succeeded if attempt.row.id in task_ids]
            self.succeeded = [attempt for attempt in self.succeeded if attempt.row.id not in task_ids]
            return found

    def released(self, rows: list[store.TaskRow]) -> None:
        """Claimed rows handed back unstarted."""
        with self.lock:
            for row in rows:
                del self.held[row.id]

    def close(self) -> int:
        """Written off: no task starts any more; returns how many are running."""
        with self.lock:
            self.closed = True
            return self.executing

    def wait_for_running(self, timeout: float) -> int:
        """Wait up to timeout for running tasks to return; how many are still running."""
        with self.lock:
            self.task_returned.wait_for(lambda: not self.executing, timeout=timeout)
            return self.executing

    # -- reads -----------------------------------------------------------------------------------

    def held_ids(self) -> list[int]:
        with self.lock:
            return list(self.held)

    def waiting_successes(self) -> list[Attempt]:
        with self.lock:
            return list(self.succeeded)

    def slots_left(self) -> int:
        """Slots free now (after a round: what its claim did not fill)."""
        with self.lock:
            return self.free_slots()

    def idle(self) -> bool:
        with self.lock:
            return not self.held

    def running(self) -> list[store.TaskRow]:
        """Held and not succeeded: waiting in the inbox or running."""
        with self.lock:
            recording = {attempt.row.id for attempt in self.succeeded}
            return [row for task_id, row in self.held.items() if task_id not in recording]

    def free_slots(self, *, recording: int = 0) -> int:
        """Slots free once `recording` succeeded tasks are recorded (call with the lock held).

        While tasks are short, the worker also claims tasks beyond its threads (claim_ahead): they
        wait in the inbox (RUNNING under this worker, fenced like the others, handed back at
        shutdown, requeued by the reaper if the worker dies) so that a thread that finishes finds its
        next task at once instead of waiting a round trip, and a round carries more tasks.
        """
        held = len(self.held) - recording
        free = self.concurrency + self.claim_ahead() - held
        if self.max_tasks is not None:  # never claim past --max-tasks
            free = min(free, self.max_tasks - (self.done_count + recording) - held)
        return max(free, 0)

    def claim_ahead(self) -> int:
        """Tasks to claim beyond the threads: what they run in CLAIM_AHEAD_WINDOW on average, at most
        --prefetch; none until a task has run (its length is unknown), none for long tasks, so a
        task never waits behind one that runs for minutes while another worker is idle."""
        if not self.average_run:
            return 0
        ahead = int(self.concurrency * CLAIM_AHEAD_WINDOW / self.average_run)
        return min(ahead, self.prefetch_max)
