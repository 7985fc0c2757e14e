# Two set-up commands for a new user: `make demo` and `make test`. Both create and fill .venv/.
#
#   make demo   autoseg's runtime dependencies only (pyproject.toml [project] dependencies)
#   make test   those, plus the extras test, export, distributed, viewer-test and metrics-reference,
#               then the test suite
#   make lint   those of make demo, plus the lint extra, then tools/lint.py (import-linter, mypy, ruff)
#
# Each step leaves a stamp in .venv/ (.installed-runtime, .installed-test, .installed-lint) and is
# redone when pyproject.toml or constraints.txt changes. Every install takes the versions CI tested
# from constraints.txt (`-c`).
#
# The CPU-torch trick. torch is installed first, on its own: constraints.txt asks for torch==2.13.0,
# and on a machine whose pip can find PyTorch's CPU build (2.13.0+cpu, about 0.9 GB; "+cpu" sorts
# above PyPI's 2.13.0) that is what pip takes, instead of PyPI's Linux build with its several GB of
# CUDA libraries; every later install sees torch satisfied and keeps it. Elsewhere, point pip at
# PyTorch's CPU wheels for this step (TORCH_SPEC="torch==2.13.0 --index-url <CPU index>").
#
# Why dynamic-network-architectures is installed with --no-deps: it declares timm, which declares
# torchvision, and PyPI's Linux torchvision is built against the CUDA torch: with the CPU build it
# fails to import ("operator torchvision::nms does not exist"), and an unpinned resolve replaces the
# CPU torch by the CUDA one. autoseg only uses its convolutional blocks (no timm, no torchvision), so
# the venv goes without them. The one thing this costs: `pip check` reports
# "dynamic-network-architectures 0.4.4 requires timm, which is not installed". PyPI has no CPU
# torchvision, so a venv with the CPU torch cannot satisfy that declaration with packages that work.
# Each stamp therefore ends with `pip check` and fails on any other line it prints (pip's own
# warning after each install is turned off: it would print that line as an ERROR every time).
# Because pip resolves the dependencies of installed packages too, autoseg itself is installed with
# --no-deps and its other requirements are read back from its installed metadata (the lists in
# pyproject.toml) into .venv/requirements-*.txt. A plain `pip install -e '.[test]'` (README) needs
# none of this and resolves everything the usual way.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --no-warn-conflicts -c constraints.txt
TORCH_SPEC ?= torch==2.13.0
DNA := dynamic-network-architectures
TEST_EXTRAS ?= test export openvino distributed viewer-test metrics-reference
DEMO_DIR ?= demo_work
LINT_CHECKS ?= layers mypy ruff

# Print autoseg's installed requirements, one a line, without their markers: the runtime ones and
# those of the extras named as arguments, less dynamic-network-architectures (installed above).
REQUIREMENTS := $(PY) -c 'import sys, importlib.metadata as md; \
	extras = {f"extra == \"{e}\"" for e in sys.argv[1:]}; \
	reqs = md.requires("autoseg") or []; \
	keep = [r.split(";")[0].strip() for r in reqs if ";" not in r or any(e in r for e in extras)]; \
	print("\n".join(r for r in keep if not r.lower().replace("_", "-").startswith("$(DNA)")))'

# `pip check`, failing on anything but the one known missing declaration (above).
PIP_CHECK := ! $(PY) -m pip check | grep -v "^$(DNA) [^ ]* requires timm, which is not installed" | grep .

.PHONY: venv venv-test venv-lint test demo lint clean-demo

venv: $(VENV)/.installed-runtime
venv-test: $(VENV)/.installed-test
venv-lint: $(VENV)/.installed-lint

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-runtime: pyproject.toml constraints.txt | $(PY)
	$(PIP) $(TORCH_SPEC)
	$(PIP) --no-deps $(DNA)
	$(PIP) --no-deps -e .
	$(REQUIREMENTS) > $(VENV)/requirements-runtime.txt
	$(PIP) -r $(VENV)/requirements-runtime.txt
	$(PIP_CHECK)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-runtime
	$(REQUIREMENTS) $(TEST_EXTRAS) > $(VENV)/requirements-test.txt
	$(PIP) -r $(VENV)/requirements-test.txt
	$(PIP_CHECK)
	touch $@

$(VENV)/.installed-lint: $(VENV)/.installed-runtime
	$(REQUIREMENTS) lint > $(VENV)/requirements-lint.txt
	$(PIP) -r $(VENV)/requirements-lint.txt
	$(PIP_CHECK)
	touch $@

test: venv-test
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m autoseg.demo --workdir $(DEMO_DIR)

# tools/lint.py runs import-linter (.importlinter), mypy (mypy.ini) and ruff (ruff.toml); the first
# two on a copy of the package as installed, since they do not follow the stage folders' mapping.
# `make lint LINT_CHECKS=ruff` runs one of them.
lint: venv-lint
	$(PY) tools/lint.py $(LINT_CHECKS)

clean-demo:
	rm -rf $(DEMO_DIR)
