# mtcli: `make quickstart` installs and runs the toy demo; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and on its own: the pinned CPU build here (a local wheel on these machines).
# Elsewhere on a CPU-only machine add  TORCH_INDEX=https://download.pytorch.org/whl/cpu  so pip does not
# pull the CUDA packages; on a GPU machine, leave it empty.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DEMO ?= toy-attention

.PHONY: install quickstart demo test lint clean toy-length bench bench-data readme-tables

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@$(BIN)/python -c "import torch; print('torch', torch.__version__, '| CUDA build' if torch.version.cuda else '| CPU build')"

demo:
	$(BIN)/mtcli train experiments/$(DEMO).yaml
	$(BIN)/mtcli translate --checkpoint runs/$(DEMO) "the small dog sees two red birds near the river"
	$(BIN)/mtcli evaluate runs/$(DEMO)

quickstart: install demo

toy-length:
	MTCLI=$(BIN)/mtcli sh experiments/toy-length.sh

# speed, memory and MFU of training and decoding, as RESULT lines (benchmarks/bench.py; ~30 min on 2 cores)
bench:
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# the data path at scale: start-up time, memory, preparation speed on synthetic corpora of 0.3M-10M pairs
# (benchmarks/data_scale.py; ~40 min and ~4 GB of disk under /tmp on 2 cores)
bench-data:
	$(BIN)/python benchmarks/data_scale.py $(BENCH_ARGS)

# the README's toy tables and figures, from the commands they cite (docs/readme_tables.py; ~10 min on 2 cores):
# trains the five toy runs under runs/readme/, writes docs/readme-results.json, rewrites the README's tables
readme-tables:
	$(BIN)/python docs/readme_tables.py run $(README_ARGS)
	$(BIN)/python docs/readme_tables.py render

test:
	$(BIN)/python -m pytest

lint:
	$(BIN)/ruff check mtcli tests

clean:
	rm -rf runs .pytest_cache
