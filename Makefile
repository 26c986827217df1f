# Two entry points: `make run` (install into .venv, start the app) and `make test` (install, run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
# Every pip install goes through the constraints: they keep the CPU build of torch (no CUDA wheels).
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: install system run test lint bench train-mini evaluate

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) app.py $(ARGS)

# System packages of the browser tests: Debian's Chromium (Playwright cannot download its own browser
# offline) and DejaVu fonts (rendered-text test images). Installed when we are root or sudo needs no
# password; otherwise the one command that installs them is printed (the browser tests skip until then).
APT_PACKAGES := chromium fonts-dejavu-core
system:
	@command -v dpkg >/dev/null || { echo "*** not Debian: install Chromium at /usr/bin/chromium for the browser tests"; exit 0; }; \
	missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO=sudo; else \
	  echo "*** the browser tests need:$$missing -- install with: sudo apt-get install -y$$missing"; exit 0; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing

test: install system
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .

bench: install
	$(PY) bench/maxsim.py
	$(PY) bench/search.py exact --dim 384
	$(PY) bench/search.py kinds --dim 384
	$(PY) bench/visual.py
	$(PY) bench/mini.py
	$(PY) bench/studio.py rerank
	$(PY) bench/studio.py coldstart
	$(PY) bench/studio.py index

train-mini: install
	$(PY) -m model.recipes.mini.train

evaluate: install
	$(PY) -m app.cli eval tests/data/devset
