# Every target creates .venv when it is missing; nothing needs installing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLES := sample_checkpoints

.PHONY: run test lint bench samples clean fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

# the tool alone, for `make run`; the test and lint tools on top, for everything else
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[test,lint]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/normcli inspect $(SAMPLES)/blowup.safetensors --sort l2 --top 8
	$(BIN)/normcli compare $(SAMPLES)/base.safetensors $(SAMPLES)/blowup.safetensors --top 5

# the lint first: a test run that passes on code that does not type-check is not green
test: lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check normcli tests benchmarks $(SAMPLES)
	$(BIN)/ruff format --check normcli tests benchmarks $(SAMPLES)
	$(BIN)/mypy

samples: $(VENV)/.installed
	$(BIN)/python $(SAMPLES)/make_samples.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench.py


# a long mutation-fuzzing run over every format (the suite runs a few hundred cases of each);
# cases that break a rule are kept in fuzz-findings/. FUZZ_CASES per format, FUZZ_SEED to replay.
FUZZ_CASES ?= 3000
fuzz: $(VENV)/.installed
	$(BIN)/python tests/fuzzing.py $(FUZZ_CASES) $(FUZZ_SEED)
