# Two entry points for a fresh machine (see README):
#   make demo   set up, then run a 3-node mesh on loopback doing real crossbar work
#   make test   set up (system packages too, when root), then run the whole test suite
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup system-deps demo test bench screenshots clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,demo]'
	touch $@

system-deps:
	bash .ci/system-deps

demo: setup
	$(BIN)/sedma demo

test: setup system-deps
	$(BIN)/python -m pytest -q -rs

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/stream.py

# docs/dashboard.png (shown in the README): a 3-node mesh under load in headless Chromium
screenshots: setup system-deps
	SEDMA_SCREENSHOT=docs/dashboard.png $(BIN)/python -m pytest -q tests/test_dashboard_browser.py

clean:
	rm -rf $(VENV) build *.egg-info
