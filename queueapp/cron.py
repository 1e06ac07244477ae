"""Cron expressions in a time zone: checked, described, and turned into ticks (UTC datetimes).

cronsim (docs/scheduling.md says why) parses and iterates; zoneinfo gives the zone, so a daily
02:30 runs once on the day clocks skip 02:00-03:00 (at 03:00) and once on the day they repeat it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

COUNT_CAP = 100_000
"""Missed ticks are counted up to this many per pass (a per-second schedule down for a year)."""

_JUST_BEFORE = timedelta(microseconds=1)


def cron_error(expression: str) -> str | None:
    """What is wrong with a cron expression, or None when it is valid."""
    try:
        next(CronSim(expression, datetime.now(UTC)))
    except CronSimError as exc:
        return (
            f"invalid cron expression {expression!r}: {exc} "
            "(five fields: minute hour day month weekday, or six with seconds last)"
        )
    except StopIteration:
        return f"cron expression {expression!r} never matches a date"
    return None


def timezone_error(name: str) -> str | None:
    """What is wrong with a time zone name, or None when zoneinfo knows it."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Paris"
    return None


def describe(expression: str) -> str:
    """The expression in words ("At 02:30 every day")."""
    return CronSim(expression, datetime.now(UTC)).explain()


def ticks_after(expression: str, zone: str, moment: datetime) -> Iterator[datetime]:
    """Ticks strictly after moment, in UTC."""
    for tick in CronSim(expression, moment.astimezone(ZoneInfo(zone))):
        yield tick.astimezone(UTC)


def ticks_from(expression: str, zone: str, moment: datetime) -> Iterator[datetime]:
    """Ticks at or after moment, in UTC (ticks are whole seconds: a microsecond before is enough)."""
    return ticks_after(expression, zone, moment - _JUST_BEFORE)


def next_ticks(expression: str, zone: str, moment: datetime, count: int) -> list[datetime]:
    return list(itertools.islice(ticks_after(expression, zone, moment), count))


@dataclass(frozen=True)
class Plan:
    """What one scheduler pass does with a due schedule."""

    ticks: list[datetime]
    """Ticks to enqueue, oldest first."""
    missed: int
    """Late ticks left out by catch_up (counted up to COUNT_CAP)."""
    next_run_at: datetime
    """The first tick after now: the schedule's new cursor."""


def plan(
    expression: str,
    zone: str,
    *,
    next_run_at: datetime,
    now: datetime,
    grace: float,
    catch_up: str,
    limit: int,
) -> Plan:
    """Ticks from next_run_at up to now. A tick later than grace seconds is missed and catch_up
    decides: "none" skips it, "latest" runs the latest missed one (unless a tick on time runs in
    this pass anyway), "all" runs the latest `limit` of them. Ticks on time always run."""
    late_before = now - timedelta(seconds=grace)
    on_time = list(
        itertools.takewhile(lambda t: t <= now, ticks_from(expression, zone, max(next_run_at, late_before)))
    )
    on_time = [t for t in on_time if t >= late_before]
    late: list[datetime] = []
    missed = 0
    if next_run_at < late_before:
        keep = {"none": 0, "latest": 0 if on_time else 1, "all": limit}[catch_up]
        kept: deque[datetime] = deque(maxlen=keep)
        for count, tick in enumerate(ticks_from(expression, zone, next_run_at), start=1):
            if tick >= late_before:
                break
            kept.append(tick)
            missed = count
            if count >= COUNT_CAP:
                # Counting stops here: the ticks kept are the latest ones before late_before.
                kept = deque(_latest_before(expression, zone, late_before, keep), maxlen=keep)
                break
        late = list(kept)
        missed -= len(late)
    following = next(ticks_after(expression, zone, now))
    return Plan(ticks=late + on_time, missed=missed, next_run_at=following)


def _latest_before(expression: str, zone: str, moment: datetime, count: int) -> list[datetime]:
    back = CronSim(expression, moment.astimezone(ZoneInfo(zone)), reverse=True)
    return sorted(tick.astimezone(UTC) for tick in itertools.islice(back, count))
