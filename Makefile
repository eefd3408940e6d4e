# `make demo` and `make test` work on a fresh machine: they create .venv when missing, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints-cpu.txt

.PHONY: demo test bench venv clean gpu-check

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip 2>/dev/null || true
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/embedx demo

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests

# The GPU lane: every CUDA path checked and timed in <= 8 min (bench/gpu/). Without CUDA: a one-line notice and
# the dry run on the CPU. No venv prerequisite: on a GPU machine it uses that machine's own torch.
gpu-check:
	bash bench/gpu/run.sh $(GPU_CHECK_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) embedx-demo build *.egg-info
