# `make demo` and `make test` each create .venv if missing and (re)install the
# pinned requirements and the package only when requirements.txt or
# pyproject.toml changed (the stamp file), so a second run starts in seconds.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean-work

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/activessf demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean-work:
	rm -rf work
