# mirg: `make help` lists the targets. Every target creates or updates .venv itself.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= embedded
LAB_ARGS ?=

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m mirg_lib kernel >/dev/null
	@touch $(STAMP)

.PHONY: help venv setup test test-all reproduce figures data defaults lab lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  (PROFILE=$(PROFILE); e.g. make reproduce PROFILE=smoke)"

venv: $(STAMP) ## create or update .venv from pyproject.toml (the one list of pins)

setup: $(STAMP) ## venv + nbstripout as this repository's git filter
	$(VENV)/bin/nbstripout --install --attributes .gitattributes

test: $(STAMP) ## the fast tests (under 2 minutes on 2 CPU cores)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP) ## every test, the slow ones too (papermill, launch, teacher server, base training, JupyterLab); what CI runs
	$(PY) -m pytest -q

reproduce: $(STAMP) ## run every notebook in order with params/$(PROFILE).yaml -> runs/$(PROFILE)/
	$(PY) -m mirg_lib reproduce --profile $(PROFILE)

figures: $(STAMP) ## redraw every figure from runs/$(PROFILE)/results/, or the committed results/$(PROFILE)/ (notebook 08 only, no training) -> runs/$(PROFILE)/figures/
	$(PY) -m mirg_lib figures --profile $(PROFILE)

data: $(STAMP) ## build only the embedded world of $(PROFILE) -> runs/$(PROFILE)/data/
	$(PY) -m mirg_lib data --profile $(PROFILE)

defaults: $(STAMP) ## rewrite params/base.yaml (every setting at its default) from the stage configs' dataclasses
	$(PY) -m mirg_lib defaults

lab: $(STAMP) ## JupyterLab on notebooks/ with the project's kernel (127.0.0.1; --allow-root when root; LAB_ARGS="--port=9999")
	$(PY) -m mirg_lib.lab $(LAB_ARGS)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check .

clean: ## remove runs/ (results and executed notebooks); keeps .venv
	rm -rf runs
