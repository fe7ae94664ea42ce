# keraseq — two commands set everything up on a fresh machine:
#   make demo   create .venv, install, train + predict on a real data set (1 process and 2 MPI ranks)
#   make test   create .venv, install, run every test
VENV   ?= .venv
PY     := $(VENV)/bin/python
MPIRUN := $(VENV)/bin/mpirun
# Open MPI refuses to run as root without these (containers, CI).
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-full bench install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) examples/demo.py --out out/demo
	$(MPIRUN) -np 2 --oversubscribe $(PY) examples/demo.py --out out/demo_mpi --compare out/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider

# The cases kept out of `make test` (marked slow: full fault injection, 4-rank runs, the
# slower notebooks) and the property tests with more hypothesis examples. CI runs both.
test-full: $(VENV)/.installed
	KERASEQ_PARITY_EXAMPLES=30 KERASEQ_LENGTHS_EXAMPLES=40 KERASEQ_FUZZ_EXAMPLES=150 $(PY) -m pytest -q \
	  -p no:cacheprovider -m "slow or property"

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_tbptt.py
	$(PY) benchmarks/bench_mpi.py
	$(PY) benchmarks/bench_lengths.py

clean:
	rm -rf $(VENV) out build *.egg-info
