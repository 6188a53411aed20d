# Two entry points (README "Quick start"):  make run   — the main job;   make test — the tests.
# Both create .venv on first use: torch==2.13.0 first (the CPU wheel; an open `torch` requirement
# could pull a multi-GB CUDA build), then the package with its C++ extension, built without build
# isolation so that pip does not fetch torch again into an isolated build environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed
CXX_SOURCES := $(wildcard csrc/binding/*.cpp csrc/paired_replacement/*.hpp) src/paired_replacement/_buildflags.py

.PHONY: run smoke test install clean

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Re-runs when the package metadata or the C++ sources change (rebuilds the extension).
$(STAMP): $(VENV)/bin/python pyproject.toml setup.py $(CXX_SOURCES)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q "setuptools>=77" wheel ninja numpy
	$(PIP) install -q --no-build-isolation -e ".[test,pipeline]"
	touch $@

# The main job: the Snakemake pipeline on its default config (config/config.yaml) on this host,
# from the per-host build to paper/. The rules call `python -m ...`, so the venv goes first on PATH.
run: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" snakemake --workflow-profile workflow/profiles/default

# The smoke config: every stage in a few minutes (numbers meaningless).
smoke: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" snakemake --workflow-profile workflow/profiles/default \
		--configfile config/smoke.yaml

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf build src/*.egg-info src/paired_replacement/*.so
