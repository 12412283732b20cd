# sansio_aio — every target bootstraps .venv itself (idempotent, quick when up to date).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,tun,webrtc,cluster
NAME   ?=
ARGS   ?=

.PHONY: all run run-demo run-udp test bench lint docs clean venv

all: test

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	@touch $(STAMP)

venv: $(STAMP)

# The main demo: the WHIP/WHEP server (http://127.0.0.1:8080/, Ctrl-C stops it).
run: $(STAMP)
	$(PY) examples/whip_whep.py $(ARGS)

# Smaller demos: the core runtime (two workers, a bus, stats), UDP echo with a client.
run-demo: $(STAMP)
	$(PY) examples/demo.py $(ARGS)

run-udp: $(STAMP)
	$(PY) examples/udp_demo.py $(ARGS)

# Every test, under coverage (branches too; the total is printed at the end). The browser
# test needs Chromium: installed here when missing and possible.
test: $(STAMP)
	@bash scripts/ensure_chromium.sh
	@bash scripts/ensure_redis.sh
	@rm -f .coverage .coverage.*
	$(PY) -m coverage run -m pytest $(ARGS)
	@$(PY) -m coverage combine -q
	@echo "coverage: $$($(PY) -m coverage report --format=total)% of sansio_aio (statements and branches)"

bench: $(STAMP)
	$(PY) -m bench $(NAME)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check sansio_aio tests
	$(VENV)/bin/mypy

# Regenerate docs/api.md from the docstrings (tests/test_api_docs.py fails when it is stale).
docs: $(STAMP)
	$(PY) scripts/gen_api.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
