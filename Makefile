# Think Beyond the Batch — every command a newcomer needs. `make` lists them.
# Each target is idempotent: run it again and it only does what is missing.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pyproject.toml's requires-python decides the supported versions; this checks PYTHON against it and
# runs on any python3, so an older one is refused with this message rather than a traceback.
CHECK_PYTHON := import operator as o, re, sys; \
	spec = re.search(r"^requires-python *= *\"([^\"]*)\"", open("pyproject.toml").read(), re.M)[1]; \
	ops = {">=": o.ge, "<=": o.le, "==": o.eq, "!=": o.ne, ">": o.gt, "<": o.lt}; \
	ok = all(ops[op](sys.version_info[:2], tuple(map(int, v.split(".")))) \
		for op, v in re.findall(r"(>=|<=|==|!=|>|<) *([0-9.]+)", spec)); \
	found = ".".join(map(str, sys.version_info[:2])); \
	sys.exit(0 if ok else f"Python {spec} is required, not {found} (pyensign 0.12.1b0 pins grpcio 1.59.0):" \
		" set PYTHON=/path/to/python3.11")
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
		--display-name "Python 3.11 (Think Beyond the Batch)" >/dev/null
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
