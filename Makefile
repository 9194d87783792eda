# One entry point for a fresh machine: `make run` and `make test` build the virtualenv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EDITABLES := -e . -e plugins/stdout -e plugins/kinesis -e plugins/sparkplug -e plugins/mqtt-sink
# the MQTT source plugin (its own line, so that other plugins' lines merge cleanly)
EDITABLES += -e plugins/mqtt-source

.PHONY: all venv run test test-fast fuzz typecheck lint format bench demo clean deadcode

all: venv

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt plugins/stdout/pyproject.toml plugins/kinesis/pyproject.toml \
		plugins/sparkplug/pyproject.toml plugins/mqtt-sink/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(EDITABLES) -r requirements-dev.txt
	touch $(STAMP)

$(STAMP): plugins/mqtt-source/pyproject.toml

run: venv
	$(BIN)/spark-sinks run -c config/example.yaml

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/vulture
	$(BIN)/mypy $(TYPED)
	$(BIN)/python -m pytest -q

# Every plugin package under plugins/ (not the *.egg-info directories next to them).
TYPED := spark_sinks $(dir $(wildcard plugins/*/spark_sinks_*/__init__.py))

typecheck: venv
	$(BIN)/mypy $(TYPED)

# The quick loop while developing: everything not marked slow (`make test` runs it all).
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# The property tests with fresh random seeds (`make test` replays fixed ones); run it a few
# times while developing, and turn what it finds into an @example.
FUZZ_FILES = $(shell grep -rl --include='test_*.py' '^from hypothesis' tests plugins consumer examples)
fuzz: venv
	HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest -q $(FUZZ_FILES)

# Dead code: vulture over the core, the plugins, the consumer, the bench and the tests, as
# [tool.vulture] in pyproject.toml says (also run by `make test`; a few seconds). A name
# only a library uses goes to vulture_whitelist.py.
deadcode: venv
	$(BIN)/vulture

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: venv
	$(BIN)/python consumer/demo.py

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
