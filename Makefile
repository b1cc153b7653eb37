# The two commands a newcomer needs:  make demo  and  make test.
# Each sets up its own virtual environment (.venv) with lf, its dependencies and the default model,
# and does nothing again on a second run that is already done.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LF := $(VENV)/bin/lf
# Where isolated runtime envs and built models for the tests are cached between runs on this machine.
export LF_TEST_CACHE ?= $(HOME)/.cache/lf-test

.PHONY: setup demo test bench completions docs schema readme screenshot clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(LF) models fetch smollm2-135m
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

test: setup
	bash scripts/ensure-browser
	bash scripts/run-tests

# the README's picture of the dashboard, taken by its browser test
screenshot: setup
	bash scripts/ensure-browser
	LF_SCREENSHOT=$(CURDIR)/docs/dashboard.png bash scripts/run-tests tests/test_dashboard.py -k real_browser

bench: setup
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
