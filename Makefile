# st4r: one command sets everything up and runs the job.
#   make demo    set up .venv, then run st4r on the example clip (CPU is fine) and export it
#   make test    set up .venv (+ the test browser), then run the test suite (what CI runs, via .ci/run)
#   make view    open the demo run in the browser viewer
# Set-up installs torch==2.13.0 FIRST, so that pip never pulls a newer multi-GB CUDA build for a
# looser requirement; then st4r in editable mode with its extras; then the CoTracker3 / MoGe code
# with --no-deps (their declared requirements would replace torch).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.st4r-installed
TORCH ?= torch==2.13.0
NO_DEPS_BACKENDS := autosegmentor==3.0.1 dlr-moge==2.0.0 dlr-utils3d==1.3 dlr-pipeline==1.0.0
DEMO_CLIP ?= examples/feng.mp4
DEMO_RUN ?= runs/feng
VIEW_PORT ?= 8080
THREE_VERSION := 0.181.0
MODEL_VIEWER_VERSION := 4.4.0
WEB := $(VENV)/web

.PHONY: setup demo view test browser doctor extras clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[dev,cotracker,moge,bench,viewer,batch,rerun]"
	$(BIN)/python -m pip install --no-deps $(NO_DEPS_BACKENDS)
	@touch $(STAMP)

extras: setup            ## (re)install the CoTracker3 / MoGe code without their dependencies
	$(BIN)/python -m pip install --no-deps $(NO_DEPS_BACKENDS)

demo: setup             ## adapt on the example clip, export PLY/GLB/TUM/COLMAP/NPZ, intrinsics, masks and the videos
	$(BIN)/st4r adapt $(DEMO_CLIP) --out $(DEMO_RUN)
	$(BIN)/st4r export $(DEMO_RUN) --ply --glb --tum --colmap --npz --intrinsics --masks --video
	@echo "look at it: $(DEMO_RUN)/summary.png, $(DEMO_RUN)/export/*.mp4; make view (or: st4r view $(DEMO_RUN))"

view: setup             ## open the demo run in the browser viewer (Ctrl-C stops it)
	$(BIN)/st4r view $(DEMO_RUN) --port $(VIEW_PORT)

# The browser tests need Chromium, three.js and model-viewer (for the GLB pages; fetched with npm, never
# committed).
# Chromium comes from apt-get when missing and we are root (CI); otherwise those tests skip with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && DEBIAN_FRONTEND=noninteractive apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "note: chromium not installed; the browser tests will be skipped"
	@test -f $(WEB)/three/build/three.module.js || { command -v npm >/dev/null 2>&1 \
	  && mkdir -p $(WEB) && cd $(WEB) && npm pack --silent three@$(THREE_VERSION) >/dev/null \
	  && rm -rf three package && tar xzf three-$(THREE_VERSION).tgz && mv package three \
	  && rm three-$(THREE_VERSION).tgz; } \
	  || echo "note: three.js not fetched (npm); the GLB page test will try again or skip"
	@test -f $(WEB)/model-viewer.min.js || { command -v npm >/dev/null 2>&1 \
	  && mkdir -p $(WEB) && cd $(WEB) && npm pack --silent @google/model-viewer@$(MODEL_VIEWER_VERSION) >/dev/null \
	  && tar xzf google-model-viewer-$(MODEL_VIEWER_VERSION).tgz package/dist/model-viewer.min.js \
	  && mv package/dist/model-viewer.min.js . && rm -rf package google-model-viewer-$(MODEL_VIEWER_VERSION).tgz; } \
	  || echo "note: model-viewer not fetched (npm); the model-viewer test will try again or skip"

test: setup browser
	$(BIN)/python -m pytest -q

doctor: setup
	$(BIN)/st4r doctor

clean-runs:
	rm -rf runs/
