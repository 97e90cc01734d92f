# Think Beyond the Batch — every command a newcomer needs. `make` lists them.
# Each target is idempotent: run it again and it only does what is missing.

SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pyproject.toml's requires-python decides the supported versions; this checks an interpreter against
# it and runs on any python3, so an unsupported one is refused with this message, not a traceback.
CHECK_PYTHON := import operator as o, re, sys; \
	spec = re.search(r"^requires-python *= *\"([^\"]*)\"", open("pyproject.toml").read(), re.M)[1]; \
	ops = {">=": o.ge, "<=": o.le, "==": o.eq, "!=": o.ne, ">": o.gt, "<": o.lt}; \
	bounds = re.findall(r"(>=|<=|==|!=|>|<) *([0-9.]+)", spec); \
	ok = lambda v: all(ops[op](v, tuple(map(int, b.split(".")))) for op, b in bounds); \
	names = " or ".join(f"3.{m}" for m in range(40) if ok((3, m))); \
	found = ".".join(map(str, sys.version_info[:2])); \
	sys.exit(0 if ok(sys.version_info[:2]) else f"Python {names} is required, not {found}: the lessons are" \
		" tested on those, and pyensign 0.12.1b0 pins grpcio 1.59.0, which has no wheels for newer Pythons." \
		f" Install Python {names}, or set PYTHON=/path/to/python{names.split()[-1]}")
# Interpreters are tried by running them: pyenv puts a python3.12 shim on the PATH that fails unless
# that version is selected, so the versions pyenv installed are tried by their full path too.
PYENV_PYTHONS := $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.*/bin/python3)
# The first of $(1) that runs and is a supported version, as a path (empty if none).
find_python = $(firstword $(foreach p,$(1),$(shell $(p) -c '$(CHECK_PYTHON)' >/dev/null 2>&1 && command -v $(p))))
ifndef PYTHON
# Python 3.11 first (the version the lessons' outputs were recorded with), then 3.12, then any.
PYTHON := $(or $(call find_python,python3.11 python3.12 $(PYENV_PYTHONS) python3),python3)
endif
# Prints the local server's data directory as local_ensign decides it ($LOCAL_ENSIGN_DATA_DIR, else its own).
DEFAULT_DATA_DIR = $(BIN)/python -c 'from local_ensign.discovery import default_data_dir; print(default_data_dir())'
# Seconds make lab waits for the server it starts to answer.
SERVER_WAIT := 30

.DEFAULT_GOAL := help
.PHONY: help install data server cluster test lint unit notebooks demo demo-cluster demo-drift lab bench clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-zA-Z_-]*:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c '$(CHECK_PYTHON)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the pinned packages (re-run when requirements change)

python-path: ## Print the interpreter make uses (VERSION=3.12: a working Python 3.12, or nothing)
	@echo $(if $(VERSION),$(call find_python,python$(VERSION) $(foreach p,$(PYENV_PYTHONS),$(if $(findstring /versions/$(VERSION).,$(p)),$(p)))),$(PYTHON))

data: $(STAMP) ## Fetch the human-rated corpora into data/ and verify their checksums
	$(BIN)/python data/fetch.py

server: $(STAMP) ## Run the local Ensign server in the foreground (Ctrl-C stops it)
	$(BIN)/python -m local_ensign serve

cluster: $(STAMP) ## Run 3 NATS nodes and 2 Ensign gateways sharing one log, in the foreground (Ctrl-C stops them)
	$(BIN)/python -m local_ensign cluster

demo: data ## Run the streaming sentiment app on the local server, restart its trainer mid-stream, summarise
	$(BIN)/python -m helpers.sentiment_app demo

demo-cluster: data ## Run the app on 3 NATS nodes and 2 gateways, kill a node midway, check each review stored and scored once
	$(BIN)/python -m helpers.scaled_app

demo-drift: data ## Run lesson 07's drift comparison (frozen, learning, reset on drift) and write drift.png
	$(BIN)/python -m helpers.drift

lab: data ## Open JupyterLab on notebooks/ with the project's kernel and the local server running
	$(BIN)/python -m ipykernel install --user --name think-beyond-the-batch \
		--display-name "Python $$($(BIN)/python -c 'import sys; print(*sys.version_info[:2], sep=".")') (Think Beyond the Batch)" >/dev/null
	@if running=$$($(BIN)/python -m local_ensign status --timeout 2 2>/dev/null); then \
		echo "Using the local Ensign server already running: $$running"; \
	else \
		$(BIN)/python -m local_ensign serve --quiet & server=$$!; \
		trap 'kill $$server 2>/dev/null' EXIT INT TERM HUP; \
		SECONDS=0; \
		until $(BIN)/python -m local_ensign status --timeout 2 >/dev/null 2>&1; do \
			if ! kill -0 $$server 2>/dev/null; then \
				echo "make lab: the local Ensign server did not start (its error is above)" >&2; exit 1; \
			elif [ $$SECONDS -ge $(SERVER_WAIT) ]; then \
				echo "make lab: the local Ensign server did not answer within $(SERVER_WAIT) s" >&2; exit 1; \
			fi; \
			sleep 0.3; \
		done; \
	fi; \
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

lint: $(STAMP) ## Check the code with ruff
	$(BIN)/ruff check .

unit: data ## Run the test suite without notebooks
	$(BIN)/python -m pytest --durations=10

notebooks: data ## Execute every notebook under nbval (a fresh local server per notebook)
	data_dir=$$(mktemp -d) && trap 'rm -rf "$$data_dir"' EXIT && \
	LOCAL_ENSIGN_DATA_DIR=$$data_dir MPLBACKEND=Agg $(BIN)/python -m pytest --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval-sanitize.cfg --nbval-cell-timeout=120 --durations=0 notebooks/

test: lint unit notebooks ## Run ruff, every test and every notebook (what CI runs)

bench: data ## Run every benchmark with its defaults (minutes; each prints its figures and verdicts)
	$(BIN)/python benchmarks/server_throughput.py
	$(BIN)/python benchmarks/streaming_overhead.py
	$(BIN)/python benchmarks/subscriber_fan_out.py

clean: ## Remove the virtual environment, caches and the local server's data
	@if [ -x $(BIN)/python ]; then data_dir=$$($(DEFAULT_DATA_DIR)) && set -x && rm -rf "$$data_dir"; fi
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
