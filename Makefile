# sansio_aio — every target bootstraps .venv itself (idempotent, quick when up to date).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,tun,webrtc,cluster,docs
NAME   ?=
ARGS   ?=

.PHONY: all run run-demo run-udp test test-stress test-all bench lint docs package clean venv

all: test

$(STAMP): pyproject.toml setup.py sansio_aio/_speedups.c
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

# The whole suite STRESS_RUNS times (default 3) while a background process keeps one core
# busy (bounded: at most STRESS_LIMIT seconds; killed at the end, even on failure), then
# one line per run: no test may depend on a quiet machine. ARGS goes to every pytest run.
STRESS_RUNS  ?= 3
STRESS_LIMIT ?= 7200
test-stress: $(STAMP)
	@bash scripts/ensure_chromium.sh
	@bash scripts/ensure_redis.sh
	@bash -c 'set -o pipefail; \
	timeout $(STRESS_LIMIT) $(PY) -c "while True: pass" & busy=$$!; \
	report=$$(mktemp); log=$$(mktemp); \
	trap "kill $$busy 2>/dev/null; wait $$busy 2>/dev/null; rm -f $$report $$log" EXIT; \
	trap "echo \"== test-stress: interrupted (SIGINT)\"; exit 130" INT; \
	trap "echo \"== test-stress: terminated (SIGTERM)\"; exit 143" TERM; \
	status=0; \
	for i in $$(seq $(STRESS_RUNS)); do \
		echo "== test-stress: run $$i of $(STRESS_RUNS), one core kept busy by pid $$busy"; \
		t0=$$SECONDS; \
		if $(PY) -m pytest -q $(ARGS) 2>&1 | tee $$log; then r=passed; else r=FAILED; status=1; fi; \
		echo "run $$i: $$r in $$((SECONDS - t0)) s: $$(tail -n 1 $$log)" >> $$report; \
	done; \
	echo "== test-stress: $(STRESS_RUNS) runs with one core busy"; cat $$report; \
	exit $$status'

# The suite on every CPython >= 3.11 found here (.venv's, python3.X on PATH, pyenv's), one
# after the other, each in its own venv (.venv-3.X, bootstrapped like .venv with EXTRAS and
# kept for the next run), then a table: version, passed, failed, skipped, seconds.
# Non-zero exit when any version fails. ONLY=3.12,3.13 limits the versions; ARGS goes to
# every pytest run.
ONLY ?=
test-all: $(STAMP)
	EXTRAS=$(EXTRAS) $(PY) scripts/test_all.py $(if $(ONLY),--only $(ONLY)) $(if $(OTHERS),--others) -- $(ARGS)

bench: $(STAMP)
	$(PY) -m bench $(NAME)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check sansio_aio tests
	$(VENV)/bin/mypy

# Regenerate docs/api.md from the docstrings (tests/test_api_docs.py fails when it is stale),
# then build the site (mkdocs.yml) into site/: warnings, broken links and anchors included,
# are errors. Open site/index.html, or serve it: .venv/bin/mkdocs serve
docs: $(STAMP)
	$(PY) scripts/gen_api.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# A wheel and an sdist in dist/ (the version is sansio_aio.__version__), checked by twine.
package: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
