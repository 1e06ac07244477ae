"""Producer: a worker's rounds. Each records the successes since the last round and claims as many
due tasks as there are free execution slots (never more), in one round trip and one commit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from uuid import UUID

from queueapp import store
from queueapp.states import BreakerState
from workers import db, metrics

logger = logging.getLogger(__name__)


class Producer:
    name = "producer"

    def __init__(
        self,
        *,
        worker_id: UUID,
        queues: Sequence[str],
        prepare: bool = True,
        limits: store.StatementLimits | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.session = store.WorkerSession(worker_id=worker_id, queues=queues, prepare=prepare, limits=limits)
        self.healthy = True
        """False after a failed round: the database is away and the worker should back off."""
        self.view: store.FlowView | None = None
        """The worker's flow view as the listener (or the first claiming round) last read it: the
        plain claim is given only the queues without flow control."""
        self.look_every: float | None = None
        """Seconds after the last look (its own, or its listener's) at which the producer looks at
        the settings itself: every few seconds without a listener of its own (TASKQUEUE["NOTIFY"]
        off, a supervisor's child); with one, a backstop for a listener that cannot connect."""
        self.looked_at = 0.0
        self.look_first = True
        """Look at the settings before a round's claim when the look is due (look_every). False for a
        supervised child: its supervisor tells it of every change (LOOK), and its rounds are mostly
        wake-ups, whose claim must not wait for a backstop look: it looks after the round instead
        (look_if_due; a claim with an older view than a change claims nothing: the epoch fence)."""
        self.look_now = threading.Event()
        """Set when the settings changed and no listener of ours read them (a supervisor's child is
        told so by its supervisor): the next round with free slots looks at them first."""
        self.settings_changed = threading.Event()
        """Set by the listener when it looked at the settings: the next flow round steps breakers."""
        self.retry_in: float | None = None
        """After a round that left slots free while a rate limit held a queue back: seconds until
        its bucket has a token again (the worker polls then instead of at its poll interval)."""

    def settings_seen(self, view: store.FlowView) -> None:
        """The listener's look at the settings (on connecting, when notified, every few seconds)."""
        self.view = view
        self.looked_at = time.monotonic()
        self.settings_changed.set()

    def look_due(self) -> bool:
        return self.look_every is not None and time.monotonic() - self.looked_at >= self.look_every

    def look_if_due(self) -> None:
        """After a round (its claimed tasks handed on): the backstop look of a producer that does not
        look first (look_first)."""
        if self.look_first or not self.look_due():
            return
        view = db.unless_unreachable(
            self.session.flow_view, "look_failed worker=%s", self.worker_id, reset=self.session.close
        )
        if view is not None:
            self.settings_seen(view)

    def breakers(self) -> frozenset[str]:
        """The worker's queues with a circuit breaker, as it last looked (its failures count there)."""
        return self.view.breakers if self.view else frozenset()

    def run_once(
        self, free_slots: int, successes: Sequence[store.Success] = ()
    ) -> tuple[dict[int, str], list[store.TaskRow]] | None:
        """(recorded status by task id, claimed rows), or None when the database could not be
        reached: nothing was recorded or claimed, and the successes are to be sent again."""
        due = self.look_due() and self.look_first
        if free_slots > 0 and (self.view is None or due or self.look_now.is_set()):
            # Before the listener's first look (a plain claim must not take a flow-controlled queue),
            # or, without a listener of our own, every look_every seconds and when told of a change.
            self.look_now.clear()  # first: a change told during the look is looked at again
            view = db.unless_unreachable(
                self.session.flow_view, "round_failed worker=%s", self.worker_id, reset=self.session.close
            )
            if view is None:
                self.healthy = False
                self.look_now.set()  # not looked at after all
                return None
            self.settings_seen(view)
        view = self.view or store.FlowView()
        flow = free_slots > 0 and bool(view.queues)
        refresh = flow and self.settings_changed.is_set()
        if refresh:
            self.settings_changed.clear()  # a change seen from now on is read by a later round
        done = db.unless_unreachable(
            lambda: self.session.round(successes, free_slots, view=view, refresh=refresh),
            "round_failed worker=%s",
            self.worker_id,
            reset=self.session.close,
            level=logging.WARNING if self.healthy else logging.DEBUG,  # once per outage
        )
        if done is None:
            self.healthy = False
            return None
        statuses, rows = done
        if free_slots > 0:
            logger.debug("claimed worker=%s free_slots=%s tasks=%s", self.worker_id, free_slots, len(rows))
        if not self.healthy:
            logger.info("round_recovered worker=%s", self.worker_id)
        self.healthy = True
        for change in self.session.breaker_changes if flow else ():
            log = logger.warning if change.state == BreakerState.OPEN else logger.info
            log(
                "breaker_%s queue=%s failures=%s attempts=%s",
                change.state,
                change.queue,
                change.failures,
                change.attempts,
            )
        rates = [q.rate_per_second for q in self.session.flow_queues if q.rate_per_second and not q.paused]
        self.retry_in = 1 / max(rates) if flow and rates and len(rows) < free_slots else None
        debug = logger.isEnabledFor(logging.DEBUG)
        for row in rows:
            if debug:
                logger.debug("task_started id=%s task=%s attempt=%s", row.id, row.task_path, row.attempts)
            if row.attempts == 1 and row.started_at is not None:
                metrics.PICKUP_LATENCY.observe(max((row.started_at - row.run_after).total_seconds(), 0.0))
        return statuses, rows

    def reconcile(
        self, held: Sequence[int], successes: Sequence[store.Success]
    ) -> tuple[list[int], dict[int, str]] | None:
        """WorkerSession.reconcile, or None when the database is still away."""
        return db.unless_unreachable(
            lambda: self.session.reconcile(held, successes),
            "reconcile_failed worker=%s",
            self.worker_id,
            reset=self.session.close,
        )

    def set_waiting(self, waiting: bool) -> bool | None:
        """WorkerSession.set_waiting, or None when the database could not be reached."""
        return db.unless_unreachable(
            lambda: self.session.set_waiting(waiting),
            "set_waiting_failed worker=%s",
            self.worker_id,
            reset=self.session.close,
            level=logging.DEBUG,  # the round says so once per outage
        )

    def close(self) -> None:
        self.session.close()
