# `make demo` and `make test` each create .venv if missing and (re)install the
# pinned requirements and the package only when requirements*.txt or
# pyproject.toml changed (the stamp files), so a second run starts in seconds.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider

.PHONY: demo test test-fast install clean-work

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

$(DEV): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $(DEV)

demo: $(STAMP)
	$(BIN)/activessf demo

# every test (real local Ray, Ray Train, Tune, MLflow registry and serving, `ray job submit`, the demo)
test: $(DEV)
	$(PYTEST) --durations=25

# the edit-test loop: the tests that need no Ray and nothing slow
test-fast: $(DEV)
	$(PYTEST) -m "not ray and not slow" --durations=10

clean-work:
	rm -rf work
