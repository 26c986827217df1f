# Two entry points: `make run` (install into .venv, start the app) and `make test` (install, run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
# Every pip install goes through the constraints: they keep the CPU build of torch (no CUDA wheels).
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: install run test lint bench train-mini evaluate

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) app.py $(ARGS)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .

bench: install
	$(PY) bench/maxsim.py
	$(PY) bench/search.py
	$(PY) bench/visual.py
	$(PY) bench/mini.py
	$(PY) bench/studio.py rerank
	$(PY) bench/studio.py coldstart
	$(PY) bench/studio.py index

train-mini: install
	$(PY) -m model.recipes.mini.train

evaluate: install
	$(PY) -m app.cli eval tests/data/devset
