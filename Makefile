# gopd_lab — one entry point for setup, the demo, the tests and JupyterLab.
# CPU (default): torch is pinned to the CPU wheel first, so pip never resolves a multi-GB CUDA build.
# GPU: `make setup TORCH=torch` (or TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,notebooks,lora,datasets,tensorboard,trackio
BIN    := $(VENV)/bin

.PHONY: setup lint demo test test-fast test-notebooks lab zoo clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
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
