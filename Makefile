# Two commands on a fresh machine: `make demo` (the main job on built-in data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# CPU build of PyTorch by default; a GPU user picks another, e.g. make TORCH_SPEC='torch==2.13.0' PIP_TORCH_ARGS='--index-url ...'
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv browser demo serve test test-all bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(PIP_TORCH_ARGS) '$(TORCH_SPEC)'
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/vlmkit demo --out demo

# search the demo's held-out scenes in the browser (http://127.0.0.1:8000) with the model the demo trained
serve: $(STAMP)
	@test -d demo/index || { echo "make serve: run 'make demo' first (it trains the model and builds demo/index)"; exit 2; }
	$(BIN)/vlmkit serve --model demo/run/model --index demo/index

# Debian's chromium for the web page's browser tests (tests/serve), installed once; without root or apt the tests
# that need it are skipped.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		(apt-get update && apt-get install -y chromium chromium-driver) || \
		echo "make browser: could not install chromium (needs root and apt-get); the browser tests will be skipped"; \
	fi

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-all: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) demo runs
