# pcnet: the two commands of the README. Each does its own setup on a fresh machine
# (Linux or macOS, Python >= 3.10, Node.js/npm for the local MathJax copy).
#
#   make book   install, run every chapter (committed parameters), build the site into _build/html
#   make test   find (or install) Chromium, install, unit tests + every chapter in smoke mode
#               (PCNET_SMOKE=1), nbstripout check, site built with warnings as errors, headless-browser check
#   make data   regenerate the committed results under data/ (make book never writes there)
#
# Setup steps leave stamp files in .venv/.stamps, so repeating a command skips them.
# Works with GNU make 3.81 (macOS): recipes do not rely on .SHELLFLAGS (which 3.81 ignores); every
# line with several commands chains them with && or starts with `set -e`, so a failing step fails make.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
SRC := _build/src
NPM_DIR := .cache/npm
MATHJAX_DIR := book/_static/mathjax
MATHJAX := $(MATHJAX_DIR)/tex-svg.js
NOTEBOOKS := $(wildcard book/*.ipynb)
JB := $(VENV)/bin/jupyter-book
CHROMIUM ?=
# Free space (MB) the Python install needs, checked before pip runs (scripts/check_disk.sh).
DISK_NEED_MB ?= 8000
# What `make test` runs before and after its setup (tests/test_setup.py overrides them).
TEST_SETUP ?= python-check browser setup
TEST_STEPS ?= unit-and-chapters nbstripout-check site-strict browser-check

.PHONY: help setup python-check browser book test unit-and-chapters nbstripout-check site site-strict \
        browser-check chapters data data-replicates readme-figure clean distclean fork

help:
	@echo "make book   - set up, execute every chapter, build the site into _build/html"
	@echo "make test   - set up, unit tests, chapters in smoke mode, strict site build, browser check"
	@echo "make data   - rerun the chapters' study CLIs (resumable, hours on 2 cores): rewrites data/results/ch4-6_*"
	@echo "make clean  - remove _build (keeps .venv);  make distclean - also .venv, .cache, MathJax copy"
	@echo "make fork URL=https://github.com/you/pcnet - point every Colab link and setup cell at your fork"

# ---------------------------------------------------------------- setup
setup: python-check $(MATHJAX) $(STAMPS)/install $(STAMPS)/data

# PYTHON >= 3.10, and $(VENV) made by it (a .venv of another Python is rebuilt). Runs every time (fast).
python-check:
	@bash scripts/check_python.sh "$(PYTHON)" "$(VENV)"

# Chromium or Chrome for the browser check: found, installed (Debian, root or passwordless sudo), or a
# stop with the command that fixes it, before the long steps. Standard library only.
browser: python-check
	@$(PYTHON) scripts/browser_check.py --ensure-browser $(if $(CHROMIUM),--chromium "$(CHROMIUM)")

$(STAMPS)/install: pyproject.toml
	@bash scripts/check_python.sh "$(PYTHON)" "$(VENV)"
	@bash scripts/check_disk.sh "$(VENV)" "$(DISK_NEED_MB)"
	$(PY) -m pip install --quiet --progress-bar off -e ".[book]"
	@# torchattacks pins an old requests: install it without its dependencies (they are in [book]).
	$(PY) -m pip install --quiet --progress-bar off --no-deps "torchattacks>=3.5"
	@mkdir -p $(STAMPS) && touch $@

# Fashion-MNIST, the offline default data: data/, the Debian package, or torchvision's download.
$(STAMPS)/data: $(STAMPS)/install
	@if $(PY) -c 'import pcnet.experiments.data as d; [d.fashion_mnist_source(split=s) for s in ("train", "test")]' \
	      >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  echo "Installing Debian package dataset-fashion-mnist"; \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist \
	    || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; } \
	    || echo "apt-get could not install dataset-fashion-mnist; trying torchvision's download"; \
	fi
	@$(PY) -c 'import pcnet.experiments.data as d; print("Fashion-MNIST:", d.fashion_mnist_source(split="train")); d.fashion_mnist_source(split="test")'
	@mkdir -p $(STAMPS) && touch $@

# MathJax 3 served by the site itself (the pages work without internet). Before the Python packages:
# a missing npm stops make before the long steps.
$(MATHJAX):
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: install Node.js (Debian: apt-get install -y nodejs npm; macOS: brew install node), then rerun make" >&2; exit 1; }
	npm install --silent --no-save --no-package-lock --no-audit --no-fund --prefix $(NPM_DIR) mathjax@3
	@mkdir -p $(MATHJAX_DIR)/input/tex
	cp -r $(NPM_DIR)/node_modules/mathjax/es5/input/tex/extensions $(MATHJAX_DIR)/input/tex/
	cp $(NPM_DIR)/node_modules/mathjax/es5/tex-svg.js $(MATHJAX)

# ---------------------------------------------------------------- book
book: setup
	$(PY) scripts/run_chapters.py --out $(SRC)
	$(MAKE) --no-print-directory site
	@echo
	@echo "The book is built. Open file://$(CURDIR)/_build/html/index.html"
	@echo "or serve it: $(PY) -m http.server --directory _build/html 8000  (then http://localhost:8000)"

chapters: setup
	$(PY) scripts/run_chapters.py --out $(SRC)

# The committed results of chapters 4-6 come from their study CLIs (resumable chunks under data/cache; the chapters
# only load and verify them, so `make book` leaves git clean); the reference weights come from
# `python -m pcnet.experiments.train` (see data/MANIFEST.json).
data: setup
	$(PY) -m pcnet.experiments.dynamics_runs
	$(PY) -m pcnet.experiments.replication
	$(PY) -m pcnet.experiments.tuning_study
	$(PY) -m pcnet.experiments.corruption_study
	$(PY) -m pcnet.experiments.tta_orders  # backbones 0, 1, 2
	$(PY) -m pcnet.experiments.robustness_study
	$(PY) -m pcnet.experiments.robustness_study --tuned
	$(PY) -m pcnet.experiments.decoder_budget
	@echo "data/results/ch3_*, ch4_*, ch5_*, ch6_* and data/MANIFEST.json rewritten: review with git diff, then commit"

# The replication studies of chapters 5 and 6 on every backbone (issue 19): days on 2 CPU cores, minutes to hours on
# a GPU (add DEVICE=cuda). Resumable: chunks go to the committed data/chunks/, so a stopped run loses nothing.
DEVICE ?= cpu
data-replicates: setup
	$(PY) -m pcnet.experiments.corruption_study --backbone-seed 1 --device $(DEVICE)
	$(PY) -m pcnet.experiments.corruption_study --backbone-seed 2 --device $(DEVICE)
	for b in 0 1 2; do $(PY) -m pcnet.experiments.robustness_study --suite --backbone-seed $$b --device $(DEVICE); done

site:
	rm -rf _build/html _build/.doctrees
	$(PY) scripts/stamp_footer.py $(SRC)/_config.yml
	$(JB) build $(SRC) --path-output . --builder html

site-strict:
	rm -rf _build/html _build/.doctrees
	$(PY) scripts/stamp_footer.py $(SRC)/_config.yml
	$(JB) build $(SRC) --path-output . --builder html -W --keep-going

# Copy the figure of the cell tagged `readme-figure` (from the last chapter run) next to the README.
readme-figure:
	@test -f $(SRC)/readme_figure.png || { echo "run make book first (no $(SRC)/readme_figure.png)" >&2; exit 1; }
	mkdir -p book/images && cp $(SRC)/readme_figure.png book/images/readme_figure.png
	@echo "book/images/readme_figure.png updated from $(SRC); commit it with the revision that made it"

# ---------------------------------------------------------------- test
test: $(TEST_SETUP)
	@start=$$(date +%s) && \
	$(MAKE) --no-print-directory $(TEST_STEPS) && \
	echo "make test: all checks passed in $$(( $$(date +%s) - start )) s (after setup)" && \
	echo "The smoke-mode site is in _build/html: open file://$(CURDIR)/_build/html/index.html"

# Unit tests and every chapter once in smoke mode (reported as pytest tests; executed copies in _build/src).
unit-and-chapters:
	$(PY) -m pytest tests --run-chapters --chapters-out $(SRC) --durations=10

nbstripout-check:
ifneq ($(NOTEBOOKS),)
	$(VENV)/bin/nbstripout --verify $(NOTEBOOKS)
	@echo "nbstripout: committed notebooks carry no outputs"
endif

browser-check:
	$(PY) scripts/browser_check.py --site _build/html --screenshot-dir _build $(if $(CHROMIUM),--chromium "$(CHROMIUM)")

# A fork runs this once: every Colab link and setup cell then opens the fork (tests/test_fork.py checks they agree).
fork:
	@test -n "$(URL)" || { echo "give the fork: make fork URL=https://github.com/OWNER/NAME" >&2; exit 1; }
	$(PYTHON) scripts/fork.py "$(URL)"

clean:
	rm -rf _build

distclean: clean
	rm -rf $(VENV) .cache $(MATHJAX_DIR)
