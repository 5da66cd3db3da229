# Two commands do all set-up on a fresh machine:  `make demo`  (the main job)  and  `make test`.
# Both install into the project's own virtual environment (VENV, created if absent) from the committed lock, so the
# packages a machine happens to hold cannot change what runs or what is tested.
# TORCH_SPEC picks the torch build installed first: the CPU wheel by default; on a GPU cluster pass your CUDA
# build, e.g.  make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
LOCK ?= requirements.lock
# The lock tool, pinned like everything else: `make lock` and the drift checks run it from the project venv.
UV_SPEC ?= uv==0.13.9
DEMO_OUT ?= runs/demo
# --resume: a second `make demo` continues (or re-prints) the same job; DEMO_ARGS=--overwrite starts over.
DEMO_ARGS ?= --resume
PY := $(VENV)/bin/python
# The Python the lock is resolved for (and CI runs); `make lock LOCK_PYTHON=3.12` resolves for another.
LOCK_PYTHON ?= 3.11

.PHONY: setup test demo lock test-latest test-oldest

setup:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) .ci/check_python.py $(LOCK)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .

test: setup
	DS_ACCELERATOR=cpu $(PY) -m pytest -q

demo: setup
	DS_ACCELERATOR=cpu $(PY) -m sparseehr demo --out $(DEMO_OUT) $(DEMO_ARGS)

# Bump the lock: the newest releases setup.cfg's ranges admit (torch left out, see lock-overrides.txt).
lock: setup
	$(PY) -m pip install -q $(UV_SPEC)
	$(VENV)/bin/uv pip compile setup.cfg --extra test --python-version $(LOCK_PYTHON) --upgrade \
		--override lock-overrides.txt --output-file $(LOCK)

# Drift checks: a separate environment, the suite, and which packages moved against the lock.
test-latest: setup
	$(PY) -m pip install -q $(UV_SPEC)
	$(PY) .ci/drift.py --mode latest --torch-spec "$(TORCH_SPEC)" --uv $(VENV)/bin/uv --lock $(LOCK)

test-oldest: setup
	$(PY) -m pip install -q $(UV_SPEC)
	$(PY) .ci/drift.py --mode oldest --torch-spec "$(TORCH_SPEC)" --uv $(VENV)/bin/uv --lock $(LOCK)
