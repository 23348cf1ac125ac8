# perpbot-db developer commands.  `make help` lists them.
# Run inside your virtualenv (or pass PYTHON=/path/to/venv/bin/python).

PYTHON ?= $(shell command -v python 2>/dev/null || echo python3)
PERPBOT ?= perpbot

.DEFAULT_GOAL := help
.PHONY: help install lint format typecheck test test-fast test-pg15 bench demo ci

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## Install the package editable, with the dev tools (pip install -e '.[dev]')
	$(PYTHON) -m pip install -e '.[dev]'

lint: ## Lint, check formatting and the layer contracts (ruff, lint-imports)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	lint-imports

format: ## Reformat the code and apply ruff's safe fixes
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

typecheck: ## Type-check with mypy (strict; config in pyproject.toml)
	$(PYTHON) -m mypy

test: ## Run the tests on the embedded PostgreSQL 18 (python -m pytest -n 2)
	$(PYTHON) -m pytest -n 2

test-fast: ## Only the pure and integration tiers (no real processes: -m "not slow")
	$(PYTHON) -m pytest -n 2 -m "not slow"

test-pg15: ## Run the tests on a throwaway Debian PostgreSQL 15 cluster (.ci/pg15.sh)
	bash .ci/pg15.sh run $(PYTHON) -m pytest -n 2

bench: ## Benchmark perpbot submit (python bench/submit.py)
	$(PYTHON) bench/submit.py

demo: ## Migrate the embedded database, load market data and jobs, admit, execute, print the status
	$(PERPBOT) db upgrade && $(PERPBOT) market load examples/sample_market.jsonl && $(PERPBOT) submit examples/sample_jobs.jsonl && $(PERPBOT) scheduler --once && $(PERPBOT) worker --once && $(PERPBOT) status

ci: ## Run the whole CI locally: lint, mypy, tests on PG 18 and PG 15 (bash .ci/run)
	bash .ci/run
