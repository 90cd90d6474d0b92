# `make demo`: set up and run the AIDSAFE recipe on the embedded model (no key, no network).
# `make test`: set up, lint, type-check and run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format clean

# PyTorch for sentence-transformers (prepare --embeddings-local and its tests): the CPU build,
# which this project's CI machines hold on disk. `make setup TORCH=torch` leaves it to pip.
TORCH ?= torch==2.13.0

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# llama-cpp-python compiles from source the first time (about 4 minutes on 2 cores).
	$(BIN)/python -m pip install --quiet -e '.[local,dev,ray,tfidf,inspect,embeddings]' '$(TORCH)'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/aidsafe generate examples/prompts.jsonl --out runs/demo

lint: setup
	$(BIN)/ruff check aidsafe tests graphs benchmarks
	$(BIN)/ruff format --check aidsafe tests graphs benchmarks
	$(BIN)/mypy aidsafe
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

format: setup
	$(BIN)/ruff check --fix aidsafe tests graphs benchmarks
	$(BIN)/ruff format aidsafe tests graphs benchmarks

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache
