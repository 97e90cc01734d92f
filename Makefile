# Think Beyond the Batch — every command a newcomer needs. `make` lists them.
# Each target is idempotent: run it again and it only does what is missing.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= .local_ensign

.DEFAULT_GOAL := help
.PHONY: help install data server test lint unit notebooks demo lab clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-zA-Z_-]*:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (pyensign pins grpcio 1.59.0): set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the pinned packages (re-run when requirements change)

data: $(STAMP) ## Fetch the human-rated corpora into data/ and verify their checksums
	$(BIN)/python data/fetch.py

server: $(STAMP) ## Run the local Ensign server in the foreground (Ctrl-C stops it)
	$(BIN)/python -m local_ensign serve --data-dir $(DATA_DIR)

demo: data ## Run the streaming sentiment app end to end on the local server and summarise it
	$(BIN)/python -m helpers.sentiment_app demo

lab: data ## Open JupyterLab on notebooks/ with the project's kernel and the local server running
	$(BIN)/python -m ipykernel install --user --name think-beyond-the-batch \
		--display-name "Python 3.11 (Think Beyond the Batch)" >/dev/null
	@if $(BIN)/python -m local_ensign status --data-dir $(DATA_DIR) --timeout 2 >/dev/null 2>&1; then \
		echo "Using the local Ensign server already running for $(DATA_DIR)"; \
	else \
		$(BIN)/python -m local_ensign serve --data-dir $(DATA_DIR) --quiet & server=$$!; \
		trap 'kill $$server 2>/dev/null' EXIT INT TERM HUP; \
		until $(BIN)/python -m local_ensign status --data-dir $(DATA_DIR) >/dev/null 2>&1; do sleep 0.3; done; \
	fi; \
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

lint: $(STAMP) ## Check the code with ruff
	$(BIN)/ruff check .

unit: data ## Run the test suite without notebooks
	$(BIN)/python -m pytest --durations=10

notebooks: data ## Execute every notebook under nbval (a fresh local server per notebook)
	LOCAL_ENSIGN_DATA_DIR=$$(mktemp -d) MPLBACKEND=Agg $(BIN)/python -m pytest --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval-sanitize.cfg --nbval-cell-timeout=120 --durations=0 notebooks/

test: lint unit notebooks ## Run ruff, every test and every notebook (what CI runs)

clean: ## Remove the virtual environment, caches and the local server's data
	rm -rf $(VENV) .pytest_cache .ruff_cache $(DATA_DIR) *.egg-info
