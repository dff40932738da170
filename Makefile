# Entry points for operators and CI. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV        ?= .venv
PYTHON      ?= $(shell scripts/find-python)
BIN         := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Molecule scenarios to run (default: every directory under molecule/).
# Python sources: these folders; pyproject.toml ([tool.ruff] extend-include) adds the scripts
# without a .py suffix.
PY_SOURCES  := scripts plugins tests molecule
SCENARIOS   ?= $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))

.PHONY: help venv lint unit molecule lab-test test lab lab-up lab-converge lab-vault lab-down images vm-image bench requirements clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt
	@test -n "$(PYTHON)" || { echo "no Python 3.12+ found (see above)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip==25.3'
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements.txt
	touch $@

venv: $(VENV)/.installed ## Create the pinned Python environment (.venv)

requirements: ## Re-pin requirements.txt and requirements-bench.txt (with hashes) from their .in files
	$(BIN)/python -m pip install --quiet 'pip-tools==7.6.2'
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links -o requirements.txt requirements.in
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links -c requirements.txt -o requirements-bench.txt requirements-bench.in

lint: venv ## yamllint, ansible-lint (production profile), ruff
	yamllint --strict .
	ansible-lint --offline
	ruff check $(PY_SOURCES)
	ruff format --check $(PY_SOURCES)

# The benchmarks' packages (requirements-bench.txt) too: the load scenario and the charts run here.
unit: venv $(VENV)/.bench-installed ## pytest: plugins, scripts, and the broken-inventory set
	pytest -q tests/unit tests/preflight

images: venv ## Build the lab and test images (cached by recipe hash)
	python scripts/lab image

vm-image: venv ## Build the VM scenario's disk image (cached by recipe hash)
	python scripts/vm image

molecule: venv images ## Every molecule scenario (SCENARIOS="a b" for some)
	python scripts/run-scenarios $(SCENARIOS)

lab-test: venv images ## The whole site on the lab: converge, idempotence, behaviour, drift
	pytest -q --durations=30 tests/lab

# Each step of `make test` is timed (scripts/timed): the table at the end, and each step's
# line as it ends, show where CI's time went. The images (the lab's containers and the VM's
# disk) build beside lint and unit: they wait on the network and the disk more than on a CPU,
# and on a fresh machine the VM image was the first four minutes of the VM scenario, the
# molecule step's long pole (2026-12-05); their log is $(IMAGES_LOG), its tail shown if they
# fail. The VM's host tools (QEMU, debootstrap, ...: scripts/vm tools) are installed before
# them, when missing, so that no apt run happens beside the unit tests, which read apt's
# package lists. The VM scenario (one emulated CPU) runs beside the container scenarios; the
# lab suite runs alone: beside it, the VM slowed both so much on two cores that CI ran out of
# time (2026-12-04).
TIMES       := .cache/test-times.txt
IMAGES_LOG  := .cache/images.log
VM_SCENARIO := metal

test: venv ## Everything CI runs: lint, unit, molecule, the lab suite
	mkdir -p $(dir $(TIMES)) && : > $(TIMES)
	scripts/timed vm-tools python scripts/vm tools
	scripts/timed images $(MAKE) --no-print-directory images vm-image > $(IMAGES_LOG) 2>&1 & images=$$!; \
	if scripts/timed lint $(MAKE) --no-print-directory lint \
	  && scripts/timed unit $(MAKE) --no-print-directory unit; then rc=0; else rc=1; fi; \
	if wait $$images; then tail -n 1 $(IMAGES_LOG); else rc=1; tail -n 60 $(IMAGES_LOG); fi; \
	exit $$rc
	scripts/timed molecule python scripts/run-scenarios --beside $(VM_SCENARIO) $(SCENARIOS)
	scripts/timed lab-suite pytest -q --durations=30 tests/lab
	@echo "--- make test, step by step:"; cat $(TIMES)

lab-up: venv ## Start the lab hosts (Docker engine and images included)
	python scripts/lab up

lab-converge: venv ## Run playbooks/site.yml against the running lab
	python scripts/lab-playbook

lab-vault: venv ## After the first converge: unseal and bootstrap the lab's Vault, move its secrets in
	python scripts/lab vault

lab: lab-up lab-converge lab-vault ## Bring up the lab, converge the whole site, hand the secrets to Vault
	python scripts/lab summary

lab-down: venv ## Remove everything the lab created
	python scripts/lab down

# Benchmarks (README, "Benchmarks"): reports, raw JSON and charts under docs/benchmarks/;
# QUICK=1 makes short runs and writes them to .cache/bench/ instead. The no-op benchmark
# starts from a fresh lab and leaves it converged for the storage and load benchmarks; the
# edge and scale benchmarks build their own hosts. Plotting and Locust come from
# requirements-bench.txt (constrained by requirements.txt), which only this target and
# `make unit` install.
BENCH_FLAGS := $(if $(QUICK),--quick)
BENCH_OUT   := $(if $(QUICK),.cache/bench,docs/benchmarks)

$(VENV)/.bench-installed: requirements-bench.txt $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-bench.txt
	touch $@

bench: venv $(VENV)/.bench-installed ## Every benchmark, with charts (docs/benchmarks/); QUICK=1 for short runs
	mkdir -p $(BENCH_OUT)
	python scripts/bench_noop_rerun.py --fresh $(BENCH_FLAGS) --output $(BENCH_OUT)/noop-rerun.md
	python scripts/bench_s3.py $(BENCH_FLAGS) --output $(BENCH_OUT)/object-storage.md
	python scripts/bench_serving_load.py --lab $(BENCH_FLAGS) --output $(BENCH_OUT)/serving-load.md
	python scripts/bench_edge.py $(BENCH_FLAGS) --output $(BENCH_OUT)/edge-overhead.md
	python scripts/bench_scale.py $(BENCH_FLAGS) --output $(BENCH_OUT)/scale.md

clean: lab-down ## Remove the lab, caches and the virtual environment
	rm -rf $(VENV) .cache
