# make app   — install (venv) and run the dashboard on the built-in demo zoo at http://127.0.0.1:7860
# make test  — install (venv + Debian chromium for the browser tests) and run the whole test suite
PY ?= python3
VENV ?= .venv

.PHONY: app test venv test-venv chromium bench

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(VENV)/bin/pip install -q -r requirements-test.txt
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
