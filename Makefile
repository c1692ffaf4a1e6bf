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

# Fuzzing at depth: every decoder gets >= 10,000 hypothesis examples (CI runs 300); no
# per-test timeout, since 10,000 examples against a real daemon take minutes.
.PHONY: fuzz soak
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -p no:cacheprovider --timeout=0 tests/test_fuzz_*.py

# Soak (not in CI): 3 daemons, requests with deploy churn, RSS/fd/task samples, for
# SOAK_DURATION seconds (default 30 minutes).
SOAK_DURATION ?= 1800
soak: setup
	$(BIN)/python bench/soak.py --duration $(SOAK_DURATION)
