# st4r: one command sets everything up and runs the job.
#   make demo    set up .venv, then run st4r on the example clip (CPU is fine) and export it
#   make test    set up .venv, then run the test suite (what CI runs, via .ci/run)
# Set-up installs torch==2.13.0 FIRST, so that pip never pulls a newer multi-GB CUDA build for a
# looser requirement; then st4r in editable mode with its extras; then the CoTracker3 / MoGe code
# with --no-deps (their declared requirements would replace torch).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.st4r-installed
TORCH ?= torch==2.13.0
NO_DEPS_BACKENDS := autosegmentor==3.0.1 dlr-moge==2.0.0 dlr-utils3d==1.3 dlr-pipeline==1.0.0
DEMO_RUN ?= runs/sheep

.PHONY: setup demo test doctor extras clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[dev,cotracker,moge,bench,batch]"
	$(BIN)/python -m pip install --no-deps $(NO_DEPS_BACKENDS)
	@touch $(STAMP)

extras: setup            ## (re)install the CoTracker3 / MoGe code without their dependencies
	$(BIN)/python -m pip install --no-deps $(NO_DEPS_BACKENDS)

demo: setup             ## adapt on the example clip, then export PLY/GLB/TUM/COLMAP/NPZ
	$(BIN)/st4r adapt examples/sheep.mp4 --out $(DEMO_RUN)
	$(BIN)/st4r export $(DEMO_RUN)

test: setup
	$(BIN)/python -m pytest -q

doctor: setup
	$(BIN)/st4r doctor

clean-runs:
	rm -rf runs/
