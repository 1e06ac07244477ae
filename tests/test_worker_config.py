"""runworker's options are WorkerConfig's fields: every one reaches the config, and a supervisor's
child gets the same config back from the arguments it is started with."""

from __future__ import annotations

from uuid import uuid4

from queueapp.management.commands.runworker import Command
from workers.config import WorkerConfig

CHILD_ID = uuid4()


def parse(*argv: str) -> WorkerConfig:
    options = vars(Command().create_parser("manage.py", "runworker").parse_args(argv))
    return WorkerConfig.from_options(options)


# Each option as typed and the value it must give; an option field without a line here fails.
TYPED: dict[str, tuple[list[str], object]] = {
    "queues": (["--queues", "emails, reports"], ("emails", "reports")),
    "concurrency": (["--concurrency", "3"], 3),
    "prefetch": (["--prefetch", "0"], 0),
    "processes": (["--processes", "2"], 2),
    "burst": (["--burst"], True),
    "max_tasks": (["--max-tasks", "7"], 7),
    "poll_interval": (["--poll-interval", "0.25"], 0.25),
    "grace": (["--grace", "4.5"], 4.5),
    "worker_id": (["--worker-id", str(CHILD_ID)], CHILD_ID),
    "metrics_port": (["--metrics-port", "9109"], 9109),
    "parent_pid": (["--parent-pid", "4242"], 4242),
}


def test_every_option_field_is_a_flag_that_reaches_the_config() -> None:
    assert sorted(TYPED) == sorted(name for name, _ in WorkerConfig.options())
    config = parse(*(arg for argv, _ in TYPED.values() for arg in argv))
    assert {name: getattr(config, name) for name in TYPED} == {
        name: value for name, (_, value) in TYPED.items()
    }
    defaults = parse()
    assert (defaults.parent_pid, defaults.burst, defaults.concurrency) == (None, False, 8)
    assert (defaults.prefetch, defaults.prefetch_max) == (None, 256)  # 32 a thread, at most 256
    assert (parse("--concurrency", "1").prefetch_max, parse("--concurrency", "64").prefetch_max) == (32, 256)
    assert parse("--concurrency", "64", "--prefetch", "0").prefetch_max == 0


def test_a_child_is_started_with_its_supervisors_config_and_its_own_id_and_parent() -> None:
    per_child = {"worker_id", "parent_pid"}
    supervisor = parse(*(arg for name, (argv, _) in TYPED.items() if name not in per_child for arg in argv))

    child = parse(*supervisor.child_args(worker_id=CHILD_ID, parent_pid=4242))

    assert (child.worker_id, child.parent_pid) == (CHILD_ID, 4242)
    for name, _ in WorkerConfig.options():
        if name not in {"processes", "metrics_port", *per_child}:
            assert getattr(child, name) == getattr(supervisor, name), name
    assert child.processes == 1
    assert child.metrics_port is None
