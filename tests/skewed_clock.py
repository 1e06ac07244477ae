"""`python tests/skewed_clock.py <manage.py args>`: manage.py in a process whose own clock is
CLOCK_OFFSET seconds off (time.time and Django's timezone.now), as on a host whose NTP failed.
The scheduler must not care: its times are the database's."""

from __future__ import annotations

import datetime as dt
import os
import runpy
import sys
import time
from pathlib import Path

OFFSET = float(os.environ["CLOCK_OFFSET"])
_real_time = time.time
time.time = lambda: _real_time() + OFFSET

from django.utils import timezone  # noqa: E402  (after the clock is moved)

timezone.now = lambda: dt.datetime.fromtimestamp(time.time(), tz=dt.UTC)
print(f"skewed_clock now={timezone.now().isoformat()} offset={OFFSET}", flush=True)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.argv = [str(ROOT / "manage.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "manage.py"), run_name="__main__")
