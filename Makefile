# Two commands do all the set-up on a fresh machine:
#   make demo   - the main job on the bundled corpus and models
#   make test   - the whole test suite
#   make test-fast - the tests that load no model (about two minutes), for the edit-run loop
# Both create .venv and install the package into it first (llama-cpp-python compiles
# llama.cpp on first install, about 11 minutes on 2 cores; pip's wheel cache keeps it).

VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS ?= -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# llama.cpp for this CPU (-march=native) minus AMX: VMs that report AMX without enabling
	# it die with SIGILL in ggml's AMX kernels. Built, not taken from pip's wheel cache,
	# which may hold a build with AMX.
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
		$(VENV)/bin/pip install --quiet --no-cache-dir "$$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)"
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(VENV)/bin/pip install --quiet -e '.[dev,chat,readers,ray,hf,serve]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/crab ingest examples/corpus/python-reference
	$(VENV)/bin/crab query "How do I catch an exception?" --top-n 3
	$(VENV)/bin/crab ask "What does the with statement do?" --top-n 3

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not model and not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check llama_index_crab tests benchmarks examples
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks

clean:
	rm -rf $(VENV)
