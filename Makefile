# `make demo` and `make test` set everything up on a fresh machine (a .venv here) and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here, in the dev/CI install path only: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint docs bench bench-data bench-checkpoint bench-instructions install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py setup.cfg | $(PY)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev,examples]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/digits.py

test: lint
	$(PY) -m pytest

# ruff's lint and format check (settings in ruff.toml; `$(PY) -m ruff format .` formats), then
# mypy's type check of the package (settings in setup.cfg's [mypy]).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy ice_ignite

clean:
	rm -rf $(VENV) runs build dist *.egg-info .pytest_cache .mypy_cache

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

# Wall-clock benchmarks against hand-written code (PyTorch Lightning, an optional extra, included).
bench: $(BENCH_STAMP)
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/large.py

# The data-bound epoch alone (DatasetNode against a plain DataLoader loop), kept with the other results.
bench-data: $(BENCH_STAMP)
	$(PY) benchmarks/bench.py --data-bound-only

# What a checkpoint costs (save_checkpoint, async too, against a hand-written torch.save), kept with the other results.
bench-checkpoint: $(BENCH_STAMP)
	$(PY) benchmarks/bench.py --checkpoint-only

# Instructions per iteration under valgrind's callgrind (Debian's valgrind): slow, about 15 minutes.
bench-instructions: $(BENCH_STAMP)
	$(PY) benchmarks/instructions.py
	$(PY) benchmarks/bench.py --render-only

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict
