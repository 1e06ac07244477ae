"""A PostgreSQL cluster of the project's own, for `make run` and `make test`.

    python -m taskqueue_project.devdb url DIR         start (initialising if needed) DIR, print its URL
    python -m taskqueue_project.devdb stop DIR        stop the cluster in DIR
    python -m taskqueue_project.devdb with-temp -- CMD...
                                                      run CMD with DATABASE_URL set to a throwaway
                                                      cluster, then remove it; with DATABASE_URL
                                                      already set, just run CMD

PostgreSQL refuses to run as root: as root the cluster belongs to, and runs as, `postgres`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

DATABASE = "taskqueue"


def find_bindir(search_path: str | None = None, pattern: str = "/usr/lib/postgresql/*/bin/initdb") -> Path:
    """Where initdb and pg_ctl live: PATH, then pg_config --bindir, then Debian's layout."""
    initdb = shutil.which("initdb", path=search_path)
    if initdb:
        return Path(initdb).resolve().parent
    pg_config = shutil.which("pg_config", path=search_path)
    if pg_config:
        bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    candidates = sorted(glob.glob(pattern), key=_version_key)
    if candidates:
        return Path(candidates[-1]).parent
    sys.exit(
        "No PostgreSQL server binaries found (initdb, pg_ctl). Install them, e.g. "
        "`apt-get install postgresql` or `brew install postgresql@15`, or set DATABASE_URL "
        "to a PostgreSQL database you already have."
    )


def _version_key(path: str) -> float:
    try:
        return float(Path(path).parent.parent.name)
    except ValueError:
        return 0.0


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(cmd: list[str]) -> None:
    result = subprocess.run(_as_owner(cmd), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}")


def init(datadir: Path, bindir: Path) -> None:
    datadir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
        os.chmod(datadir, 0o700)
    _run([str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    port = _free_port()
    with open(datadir / "postgresql.conf", "a") as conf:
        conf.write(
            f"\n# taskqueue development cluster\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{datadir}'\nmax_connections = 200\nfsync = on\n"
        )


def port_of(datadir: Path) -> int:
    """The cluster's port: the last one set (a standby's own comes after the primary's it copied)."""
    lines = (datadir / "postgresql.conf").read_text().splitlines()
    ports = [line for line in lines if line.startswith("port = ")]
    if not ports:
        raise SystemExit(f"no port in {datadir}/postgresql.conf")
    return int(ports[-1].split("=")[1])


def _let_postgres_in(datadir: Path) -> None:
    # The postgres user must be able to walk down to its data directory.
    for parent in datadir.parents:
        if parent.exists() and parent.stat().st_mode & 0o001 == 0:
            os.chmod(parent, parent.stat().st_mode | 0o001)


def start(datadir: Path) -> str:
    """Start the cluster in datadir (initialising it first if empty); return its DATABASE_URL."""
    bindir = find_bindir()
    if os.geteuid() == 0:
        _let_postgres_in(datadir)
    if not (datadir / "PG_VERSION").exists():
        init(datadir, bindir)
    status = subprocess.run(
        _as_owner([str(bindir / "pg_ctl"), "-D", str(datadir), "status"]), capture_output=True
    )
    if status.returncode != 0:
        _run([str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(datadir / "server.log"), "-w", "start"])
    port = port_of(datadir)
    created = subprocess.run(
        _as_owner([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE]),
        capture_output=True,
        text=True,
    )
    if created.returncode != 0 and "already exists" not in created.stderr:
        sys.exit(f"createdb {DATABASE} failed:\n{created.stderr}")
    return f"postgres://postgres@127.0.0.1:{port}/{DATABASE}"


def stop(datadir: Path, mode: str = "fast") -> None:
    """Stop the cluster; mode "immediate" is a crash (fault tests): what was not flushed is lost."""
    if (datadir / "PG_VERSION").exists():
        bindir = find_bindir()
        subprocess.run(
            _as_owner([str(bindir / "pg_ctl"), "-D", str(datadir), "-m", mode, "-w", "stop"]),
            capture_output=True,
        )


def restart(datadir: Path) -> None:
    """Fast restart (fault tests): connections are cut, the data stays."""
    bindir = find_bindir()
    _run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-l",
            str(datadir / "server.log"),
            "-m",
            "fast",
            "-w",
            "restart",
        ]
    )


def start_standby(primary: Path, datadir: Path) -> str:
    """A streaming standby of the running cluster in primary (failover tests): a base backup with
    its replication settings (pg_basebackup -R), started on a port of its own; returns its URL."""
    bindir = find_bindir()
    datadir.mkdir(parents=True)
    if os.geteuid() == 0:
        _let_postgres_in(datadir)
        shutil.chown(datadir, "postgres", "postgres")
        os.chmod(datadir, 0o700)
    source = ["-h", "127.0.0.1", "-p", str(port_of(primary)), "-U", "postgres"]
    _run([str(bindir / "pg_basebackup"), *source, "-D", str(datadir), "-R", "-X", "stream", "-c", "fast"])
    port = _free_port()
    with open(datadir / "postgresql.conf", "a") as conf:
        conf.write(f"\n# standby\nport = {port}\nunix_socket_directories = '{datadir}'\n")
    _run([str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(datadir / "server.log"), "-w", "start"])
    return f"postgres://postgres@127.0.0.1:{port}/{DATABASE}"


def promote(datadir: Path) -> None:
    """Make the standby in datadir a primary (failover tests)."""
    _run([str(find_bindir() / "pg_ctl"), "-D", str(datadir), "-w", "promote"])


def with_temp(cmd: list[str]) -> int:
    """Run cmd against DATABASE_URL, or a throwaway cluster removed afterwards."""
    if os.environ.get("DATABASE_URL"):
        return subprocess.call(cmd)
    tmp = Path(tempfile.mkdtemp(prefix="taskqueue-test-pg-"))
    try:
        url = start(tmp / "data")
        return subprocess.call(cmd, env={**os.environ, "DATABASE_URL": url})
    finally:
        stop(tmp / "data")
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "url":
        print(start(Path(argv[1]).absolute()))
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        stop(Path(argv[1]).absolute())
        return 0
    if len(argv) >= 3 and argv[0] == "with-temp" and argv[1] == "--":
        return with_temp(argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
