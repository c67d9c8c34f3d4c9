# make app   — install (venv) and run the dashboard on the built-in demo zoo at http://127.0.0.1:7860
# make test  — install (venv + Debian chromium for the browser tests) and run the whole test suite
PY ?= python3
VENV ?= .venv
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# this machine's pip.conf names local index folders that do not all exist; drop pip's warnings about them
QUIET_PIP := 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }

.PHONY: app test venv test-venv chromium bench

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt $(QUIET_PIP)
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(VENV)/bin/pip install -q -r requirements-test.txt $(QUIET_PIP)
	touch $@

venv: $(VENV)/.installed
test-venv: $(VENV)/.installed-test

chromium:
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium fonts-dejavu-core; }

app: venv
	$(VENV)/bin/python app.py

test: test-venv chromium
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

bench: venv
	$(VENV)/bin/python bench/merge_bench.py
