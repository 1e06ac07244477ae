# taskqueue: `make run` serves the app and a worker; `make test` runs everything CI runs.
# Both create .venv and, without DATABASE_URL, a PostgreSQL cluster of their own.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.12 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
DEVDB := $(PY) -m taskqueue_project.devdb
# The project's own cluster for `make run`, unless DATABASE_URL says otherwise.
DB_URL = $${DATABASE_URL:-$$($(DEVDB) url .pgdata)}

.PHONY: run test manage demo lint bench bench-scaling bench-churn clean-db chromium promtool pgbouncer bytecode

$(VENV)/.requirements: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else "taskqueue needs Python 3.12; found " + sys.version.split()[0] + " (set PYTHON=/path/to/python3.12)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.requirements-dev: $(VENV)/.requirements requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The project's bytecode, as the image has it: where PYTHONDONTWRITEBYTECODE is set, every process
# start compiled the project's modules again (a worker's start-up, docs/benchmarks.md). Only what
# changed since is compiled.
bytecode: $(VENV)/.requirements
	@$(PY) -m compileall -q manage.py taskqueue_project queueapp workers

run: $(VENV)/.requirements bytecode
	$(PY) -m taskqueue_project.devserver

# The console's browser test drives Debian's Chromium; as root, install it if it is missing.
chromium:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || apt-get install -y -q chromium >/dev/null \
		|| { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
		|| echo "could not install chromium: the browser test will be skipped"

# The monitoring test runs `promtool check rules` (Debian's prometheus package); as root, install it.
promtool:
	@command -v promtool >/dev/null || [ "$$(id -u)" != 0 ] || apt-get install -y -q prometheus >/dev/null \
		|| { apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null; } \
		|| echo "could not install promtool: the rules check will be skipped"

# The pooler test runs Debian's PgBouncer (its own instance, on a free port); as root, install it.
pgbouncer:
	@command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || [ "$$(id -u)" != 0 ] \
		|| apt-get install -y -q pgbouncer >/dev/null \
		|| { apt-get update -q >/dev/null && apt-get install -y -q pgbouncer >/dev/null; } \
		|| echo "could not install pgbouncer: the PgBouncer tests will be skipped"

test: $(VENV)/.requirements-dev bytecode chromium promtool pgbouncer
	$(DEVDB) with-temp -- sh -c '$(PY) -m pytest && DEBUG=1 $(PY) manage.py makemigrations --check --dry-run && $(VENV)/bin/ruff check . \
		&& $(VENV)/bin/mypy queueapp workers taskqueue_project'

manage: $(VENV)/.requirements bytecode
	@DATABASE_URL="$(DB_URL)" DEBUG=$${DEBUG:-1} $(PY) manage.py $(ARGS)

demo: $(VENV)/.requirements bytecode
	@DATABASE_URL="$(DB_URL)" DEBUG=$${DEBUG:-1} $(PY) manage.py enqueue_demo $(ARGS)

lint: $(VENV)/.requirements-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy queueapp workers taskqueue_project

bench: $(VENV)/.requirements-dev
	$(DEVDB) with-temp -- sh -c '$(PY) bench/suite.py --profile && $(PY) bench/ceiling.py && $(PY) bench/http_submit.py && $(PY) bench/console_1m.py && $(PY) bench/scaling.py --publish'

# Throughput and pickup latency with 1, 2, 4 and 8 worker processes and threads (docs/benchmarks.md);
# results and a chart in bench/results/, the chart also in docs/benchmarks-scaling.png.
bench-scaling: $(VENV)/.requirements-dev
	$(DEVDB) with-temp -- $(PY) bench/scaling.py --publish

# Ten minutes of enqueue + drain with a snapshot held in the middle (docs/benchmarks.md, "Churn").
bench-churn: $(VENV)/.requirements-dev
	$(DEVDB) with-temp -- $(PY) bench/churn.py

clean-db:
	-$(DEVDB) stop .pgdata
	rm -rf .pgdata
