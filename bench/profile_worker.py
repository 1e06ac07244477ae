"""A py-spy profile of one worker draining no-op tasks at full speed.

Records `runworker --burst --concurrency 32` over 40,000 tasks (idle threads left out), saves the
folded stacks to docs/profiles/worker-drain.folded (open it in speedscope or flamegraph.pl) and
returns a Markdown summary: the share of samples in each of the hottest functions, inclusive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter

from bench.common import ROOT, worker_env
from bench.drain import RUNWORKER, fill, verified_rate

HZ = 200
FOLDED = ROOT / "docs" / "profiles" / "worker-drain.folded"


# Frames every sample passes through, which say nothing.
ROOTS = ("manage.py", "django/core/management", "threading.py", "runworker.py", "Worker.run (", "<module>")


def frame_name(frame: str) -> str:
    """'func (path/file.py:123)' -> 'func (path/file.py)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarize(folded: str, top: int = 15) -> tuple[int, list[tuple[str, int]], str]:
    """(samples, hottest functions by inclusive samples, trimmed folded text) of the samples taken
    while the worker ran (start-up, outside workers/, left out)."""
    inclusive: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if "workers/" not in stack:
            continue
        samples = int(count)
        total += samples
        frames = [frame_name(frame) for frame in stack.split(";") if not any(root in frame for root in ROOTS)]
        kept[";".join(frames)] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    trimmed = "".join(f"{stack} {n}\n" for stack, n in kept.most_common() if n * 2000 >= total)
    return total, inclusive.most_common(top), trimmed


def record(n: int = 40_000) -> str:
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not os.path.exists(spy):
        return "(no profile: py-spy is not installed)"
    fill(n)
    FOLDED.parent.mkdir(exist_ok=True)
    # --gil: only the thread holding the GIL is sampled, so waiting threads (for a task, a timer,
    # the database) drop out by themselves and what remains is where Python spends its time.
    command = [spy, "record", "--gil", "--nonblocking", "--rate", str(HZ), "--format", "raw"]
    command += ["--output", str(FOLDED), "--", *RUNWORKER, "--burst", "--concurrency", "32"]
    proc = subprocess.run(
        command, cwd=ROOT, env=worker_env(os.environ["DATABASE_URL"]), capture_output=True, text=True
    )
    if proc.returncode != 0:
        return f"(no profile: py-spy failed: {proc.stderr.strip()[-500:]})"
    rate = verified_rate(n)
    total, hot, trimmed = summarize(FOLDED.read_text())
    FOLDED.write_text(trimmed)
    held = total / (n / rate * HZ)
    lines = [
        f"Profile: py-spy --gil ({HZ} Hz, non-blocking), 1 worker process x 32 threads draining {n:,} no-ops "
        f"({rate:,.0f} tasks/s under the profiler). Some thread of the worker held the GIL in {total:,} "
        f"samples, {held:.0%} of the drain's length: the rest of the time the process waited for "
        f"PostgreSQL. Where the GIL time went, inclusive (folded stacks: `docs/profiles/{FOLDED.name}`):",
        "",
        "| function (file) | share of samples, inclusive |",
        "|---|---|",
    ]
    lines += [f"| `{frame}` | {count / total:.0%} |" for frame, count in hot]
    return "\n".join(lines)
