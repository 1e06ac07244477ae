"""`make run`: the project's own database (unless DATABASE_URL is set), migrations, gunicorn on
http://127.0.0.1:8000 and one worker, in the foreground. Ctrl+C stops them all.

Children run in process groups of their own so a terminal's Ctrl+C reaches only this process,
which passes one SIGTERM to each: a worker that got the signal twice would stop at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from taskqueue_project import devdb

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    env = {**os.environ, "DEBUG": os.environ.get("DEBUG", "1")}
    own_db = not env.get("DATABASE_URL")
    if own_db:
        env["DATABASE_URL"] = devdb.start(ROOT / ".pgdata")
    bindir = Path(sys.executable).parent
    if subprocess.call([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env) != 0:
        return 1
    commands = {
        # The shipped settings (the Dockerfile's CMD), on loopback and with an access log.
        "web": [
            str(bindir / "gunicorn"),
            "--config",
            "python:taskqueue_project.gunicorn_conf",
            "taskqueue_project.wsgi",
            "--bind",
            "127.0.0.1:8000",
            "--access-logfile",
            "-",
        ],
        "worker": [sys.executable, "manage.py", "runworker"],
    }
    children = {
        name: subprocess.Popen(cmd, cwd=ROOT, env=env, process_group=0) for name, cmd in commands.items()
    }
    print("taskqueue: http://127.0.0.1:8000/ (a login for the console: make manage ARGS=createsuperuser)")
    print("taskqueue: in another shell, `make demo` enqueues demo tasks; Ctrl+C stops everything")

    stopping = False

    def stop(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while all(child.poll() is None for child in children.values()):
        time.sleep(0.2)
    stop()  # one of them ended (or we were told to stop): end the others too
    codes = [child.wait() for child in children.values()]
    if own_db:
        devdb.stop(ROOT / ".pgdata")
    return 0 if stopping and not any(code not in (0, -signal.SIGTERM) for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
