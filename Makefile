# Two set-up commands for a new user: `make demo` and `make test`. Both create and fill .venv/.
#
# Why torch and dynamic-network-architectures are installed by hand: dynamic-network-architectures
# declares timm, which declares torchvision, which drags in a multi-GB CUDA build of torch. autoseg
# only uses its convolutional blocks (no timm), so the venv takes the CPU build of torch and installs
# dynamic-network-architectures without its optional transformer dependencies. A plain
# `pip install .` still works and resolves everything the usual way.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DNA_SPEC ?= dynamic-network-architectures==0.4.4
DEMO_DIR ?= demo_work

.PHONY: venv test demo clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps $(DNA_SPEC)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m autoseg.demo --workdir $(DEMO_DIR)

clean-demo:
	rm -rf $(DEMO_DIR)
