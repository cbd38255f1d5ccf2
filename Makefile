# `make demo` and `make test` set everything up on a fresh machine (a .venv here) and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here, in the dev/CI install path only: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint docs bench bench-data bench-checkpoint bench-instructions bench-workloads bench-gpu install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py setup.cfg | $(PY)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev,examples,mlflow]"
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
	$(PY) benchmarks/workloads.py --render-only

# examples/char_lm.py at its full size against the same training by hand (eager, compiled, 2-process DDP;
# Lightning beside them), kept with the other results: about 30 minutes on 2 cores.
bench-workloads: $(BENCH_STAMP)
	$(PY) benchmarks/workloads.py

# char_lm on a GPU (bf16, fp16 + GradScaler, eager and compiled): tokens/s of ice_ignite and the loop, in
# benchmarks/gpu.json; under 5 minutes. Without a GPU it runs its small CPU fallback.
bench-gpu: $(STAMP)
	$(PY) benchmarks/gpu.py

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

# The gallery's full settings (docs/gallery.md), their results printed, their curves redrawn into docs/img/gallery/
# (about 10 minutes on 2 idle cores, char_lm 4 of them). OMP_NUM_THREADS=1: the models are tiny, more threads only wait for each other.
GALLERY_RUNS ?= runs/gallery
.PHONY: gallery
gallery: $(STAMP)
	rm -rf $(GALLERY_RUNS)
	export OMP_NUM_THREADS=1; set -e; \
	$(PY) examples/gan_digits.py out_dir=$(GALLERY_RUNS) run_id=gan; \
	for s in 0 1 2; do $(PY) examples/pretrain_finetune.py seed=$$s out_dir=$(GALLERY_RUNS) run_id=pf$$s; done; \
	$(PY) examples/multitask.py out_dir=$(GALLERY_RUNS) run_id=multitask; \
	$(PY) examples/from_ignite_plain.py out_dir=$(GALLERY_RUNS) run_id=plain; \
	$(PY) examples/from_ignite.py out_dir=$(GALLERY_RUNS) run_id=port; \
	$(PY) examples/char_lm.py out_dir=$(GALLERY_RUNS) run_id=char_lm
	$(PY) examples/plot_board.py $(GALLERY_RUNS)/gan D/d_loss G/g_loss judge/acc --smooth 0.95 --out docs/img/gallery/gan_digits.png
	cp $(GALLERY_RUNS)/gan/samples.png docs/img/gallery/gan_digits_samples.png
	$(PY) examples/plot_board.py $(GALLERY_RUNS)/pf0-finetune val/acc val/ce --label pretrained --also "from scratch=$(GALLERY_RUNS)/pf0-scratch" --out docs/img/gallery/pretrain_finetune.png
	$(PY) examples/plot_board.py $(GALLERY_RUNS)/pf0-pretrain pretrain/mse val/mse --out docs/img/gallery/pretrain.png
	$(PY) examples/plot_board.py $(GALLERY_RUNS)/multitask cls/ce rec/mse cls_val/acc rec_val/mse --out docs/img/gallery/multitask.png
	$(PY) examples/plot_board.py $(GALLERY_RUNS)/plain/tb training/loss validation/accuracy lr/group_0 --label ignite --also ice_ignite=$(GALLERY_RUNS)/port/tb --xlabel "iteration (validation: epoch)" --out docs/img/gallery/from_ignite.png
	$(PY) examples/plot_board.py $(GALLERY_RUNS)/char_lm train/ce val/ce --one-panel --out docs/img/gallery/char_lm.png
