# Two commands: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser run test fuzz screenshots lint format bench reliability soak profile clean

install: $(STAMP)

# Reinstall only when requirements.txt changed since the last install. libseccomp2
# (Debian) is what the model runners' seccomp filter loads.
$(STAMP): requirements.txt
	.ci/install-libseccomp
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

# Debian's Chromium, which the browser tests drive (skipped when already there).
browser:
	.ci/install-browser

run: install
	$(PY) run.py serve

test: install browser
	$(PY) -m pytest

# schemathesis at a larger budget than make test's: 60 generated requests per operation
# of /v1/openapi.json (1,500 in all); no 5xx, every answer as documented.
fuzz: install
	SIBYL_FUZZ_EXAMPLES=60 SIBYL_FUZZ_MIN_REQUESTS=1000 $(PY) -m pytest -q -s tests/test_fuzz.py

# The browsable API's pages, photographed by its browser tests, for the README.
screenshots: install browser
	SIBYL_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/test_browsable.py

# Sibyl against three Flask baselines (same work, fast no record, tutorial), an expensive
# CNN, two gunicorn workers, the in-process limits, the model runner's cost per batch and
# itself without access control (about 14 minutes).
bench: install
	$(PY) -m bench.run

# The fault suite: workers, API processes and the database killed or paused under load,
# slow clients, graceful shutdown, poison jobs, runaway and crashing models, the model
# cache's disk full (a tmpfs: root); a table, and bench/results/reliability-*.json.
reliability: install
	$(PY) -m bench.reliability

# SIBYL_SOAK_SECONDS (600) at 80% of the peak jobs/s measured first: iris and digits jobs
# of 1 to 100 instances, an analyst reading pages; no 5xx, p99 and every process's memory
# steady, every job finished once; a table, and bench/results/soak-*.json.
soak: install
	$(PY) -m bench.soak

# Where the time goes: py-spy samples of the API worker and the database under load
# (MODEL=iris|digits|cnn); docs/PERFORMANCE.md keeps the latest top lines.
MODEL ?= iris
profile: install
	$(PY) -m bench.profile --model $(MODEL)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache
