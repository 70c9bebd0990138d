# berth.stack developer entry points. `make demo` and `make test` do all the set-up themselves.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.ansible/collections
export ANSIBLE_FORCE_COLOR := 0
export PY_COLORS := 0
STAGE := tests/harness/stage.sh
export BERTH_STAGE_RECORD := $(CURDIR)/tests/output/stages.txt
SCENARIOS := $(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
SCENARIO ?=
MOLECULE_CMD ?= test
VERSION ?=

.PHONY: help venv prepare images lint sanity unit unit-rollout unit-other molecule test demo demo-clean build clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed ## Create the project virtualenv from requirements-dev.txt

prepare: venv ## Prepare this machine: Docker engine, base images, offline ansible-test, collection link
	python3 tests/harness/prepare.py

images: venv ## Rebuild the Debian 13/12 base images
	python3 tests/harness/prepare.py --only engine --only images --rebuild-images

lint: venv ## ansible-lint (production), yamllint, ruff
	python3 tests/harness/prepare.py --only link
	ansible-lint --offline
	yamllint --strict .
	ruff check .
	ruff format --check .

sanity: venv ## ansible-test sanity on a copy of the checkout
	python3 tests/harness/prepare.py --only ansible-test
	tests/harness/sanity.sh

UNIT_PREPARE := python3 tests/harness/prepare.py --only packages --only engine --only compose --only images --only demo-images --only link --only zipimport-cache
unit: venv ## pytest unit and module tests (real PostgreSQL and Docker where the code talks to them)
	$(UNIT_PREPARE)
	pytest -p no:cacheprovider tests/unit

# make test splits the unit tests between its lanes: the compose_rollout module tests (real engine,
# nginx and a request loop) in one, every other unit test in the other.
# Three pytest-xdist workers, a test file each at a time: most of a rollout test is waiting for containers
# to become healthy, so several side by side take little more than one. Each worker has its own app,
# network and ports (tests/unit/compose_rollout/conftest.py).
unit-rollout: venv ## The compose_rollout module tests alone (tests/unit/compose_rollout), three workers
	$(UNIT_PREPARE)
	pytest -p no:cacheprovider --durations=15 -n 3 --dist loadfile tests/unit/compose_rollout

unit-other: venv ## Every unit test but the compose_rollout module tests
	$(UNIT_PREPARE)
	pytest -p no:cacheprovider --durations=15 tests/unit --ignore=tests/unit/compose_rollout

molecule: prepare ## Molecule scenarios: all, or SCENARIO=name (MOLECULE_CMD=converge|verify|destroy...)
	@for scenario in $(or $(SCENARIO),$(SCENARIOS)); do \
	  $(STAGE) "molecule $$scenario" molecule $(MOLECULE_CMD) -s $$scenario || exit 1; \
	done

# `make test` runs these two lanes side by side after prepare (tests/harness/lanes.py); every
# scenario under molecule/ must be in one of them. Balanced by their measured times: lint, sanity, the
# compose_rollout module tests (three workers), docker_host, compose_app and seed_systems take about as long
# as the other unit tests and the other scenarios together. The suite is CPU-bound on two cores: a third
# lane made each stage about 1.5 times slower and the whole run no shorter (compose_app 858 s instead of
# 531, unit-other 563 instead of 300).
LANE_APP := lint,sanity,unit-rollout,molecule:docker_host,molecule:compose_app,molecule:seed_systems
LANE_HOSTS := unit-other,molecule:nginx,molecule:firewall,molecule:postgres_backup,molecule:fleet

test: ## Everything CI runs: prepare, then two lanes side by side; each lane stops at its first failure
	@rm -f $(BERTH_STAGE_RECORD) tests/output/failures.txt
	@start=$$(date +%s); rc=0; \
	  $(STAGE) prepare $(MAKE) --no-print-directory prepare || exit $$?; \
	  python3 tests/harness/lanes.py --lane app=$(LANE_APP) --lane hosts=$(LANE_HOSTS) || rc=$$?; \
	  printf '  %-28s %9ds (the lanes run side by side: not the sum of the stages)\n' \
	    "make test, wall time" $$(( $$(date +%s) - start )) >> $(BERTH_STAGE_RECORD); \
	  $(STAGE) --summary; if [[ -s tests/output/failures.txt ]]; then cat tests/output/failures.txt; fi; exit $$rc

demo: prepare ## Provision a local Debian 13 container with deploy.yml and show the result
	ansible-playbook tests/harness/demo_target.yml
	ansible-playbook playbooks/provision.yml -i inventories/local
	ansible-playbook tests/harness/demo_images.yml -i inventories/local
	ansible-playbook deploy.yml -i inventories/local $(if $(VERSION),-e berth_demo_version=$(VERSION))
	ansible-playbook tests/harness/demo_report.yml -i inventories/local

demo-clean: venv ## Remove the demo target
	ansible-playbook tests/harness/demo_target.yml -e berth_demo_state=absent

.PHONY: bench-migration-locks bench-rollout
bench-migration-locks: venv ## Benchmark: app query stalls during an ALTER, plain psql vs safe_migration
	python3 tests/harness/prepare.py --only packages --only link
	python bench/migration_locks.py

bench-rollout: venv ## Benchmark: failed requests during a naive compose up, a berth rollout, a failing one; no-op deploy times
	python3 tests/harness/prepare.py --only packages --only engine --only compose --only images --only demo-images --only link
	python bench/rollout.py

.PHONY: bench-task-cost
bench-task-cost: venv ## Benchmark: CPU per Ansible task on a test host, docker CLI vs Docker API, with and without the bytecode cache
	python3 tests/harness/prepare.py --only engine --only images --only link
	python bench/task_cost.py $(if $(TASKS),--tasks $(TASKS))

.PHONY: bench-payloads
bench-payloads: venv ## Benchmark: controller CPU per ansible-playbook run, payloads built by each run vs shared
	python3 tests/harness/prepare.py --only link --only zipimport-cache
	python bench/payloads.py $(if $(RUNS),--runs $(RUNS))

.PHONY: bench-poll-interval
bench-poll-interval: venv ## Benchmark: controller CPU and wall time per run at ansible-core's internal poll interval vs the project's
	python bench/poll_interval.py $(if $(ROUNDS),--rounds $(ROUNDS))

.PHONY: bench-backup bench-healthchecks
bench-healthchecks: venv ## Benchmark: CPU per container and time to healthy of Docker healthcheck settings
	python3 tests/harness/prepare.py --only engine --only images --only demo-images --only link
	python bench/healthchecks.py $(if $(CONTAINERS),--containers $(CONTAINERS))

bench-backup: venv ## Benchmark: postgres_backup's verified backup of a ~1 GB database vs a bare pg_dump -Fc
	python3 tests/harness/prepare.py --only engine --only images --only demo-images --only link
	python bench/backup.py $(if $(SIZE_MB),--size-mb $(SIZE_MB))

build: venv ## Build the collection tarball
	ansible-galaxy collection build --force --output-path build/

clean: ## Remove the virtualenv, caches and build output
	rm -rf $(VENV) .ansible build tests/output .pytest_cache .ruff_cache
