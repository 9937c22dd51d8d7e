# Two commands for a newcomer: `make demo` (main job on an embedded default) and `make test`.
# Each creates .venv and installs cmrfm into it on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
DEMO_OUT ?= outputs/demo

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo owns $(DEMO_OUT) and starts it afresh; `cmrfm analyze` itself never overwrites outputs.
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/cmrfm simulate --subjects 1 --seed 0 --out $(DEMO_OUT)/cohort
	$(BIN)/cmrfm data inspect $(DEMO_OUT)/cohort/sim0000
	$(BIN)/cmrfm analyze --example --out $(DEMO_OUT)/analysis
	@echo "report: $(DEMO_OUT)/analysis/example/report.html"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
