# Two commands do all set-up on a fresh machine:  `make demo`  (the main job)  and  `make test`.
# TORCH_SPEC picks the torch build installed first: the CPU wheel by default; on a GPU cluster pass your CUDA
# build, e.g.  make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo
# --resume: a second `make demo` continues (or re-prints) the same job; DEMO_ARGS=--overwrite starts over.
DEMO_ARGS ?= --resume

.PHONY: setup test demo

setup:
	$(PYTHON) -m pip install -q $(TORCH_SPEC)
	$(PYTHON) -m pip install -q -e ".[test]"

test: setup
	DS_ACCELERATOR=cpu $(PYTHON) -m pytest -q

demo: setup
	DS_ACCELERATOR=cpu $(PYTHON) -m sparseehr demo --out $(DEMO_OUT) $(DEMO_ARGS)
