"""`python tests/slow_fork.py <manage.py args>`: manage.py in a process whose forked children spend
SLOW_FORK seconds in an at-fork hook before anything of theirs runs, as a loaded host may: the
window in which a child still has its supervisor's signal handlers, made wide enough to hit."""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

SECONDS = float(os.environ["SLOW_FORK"])
os.register_at_fork(after_in_child=lambda: time.sleep(SECONDS))

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.argv = [str(ROOT / "manage.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "manage.py"), run_name="__main__")
