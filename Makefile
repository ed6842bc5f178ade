# BlackwellSparseK: every target installs/builds what it needs first.
#   make test        all tests (GoogleTest + pytest); GPU tests skip without an sm_90 GPU
#   make bench       the benchmark report (needs an H100/H200)
#   make heal        check/install the toolchain pieces and print an environment report
PYTHON ?= python3
BUILD_DIR ?= build
LEAN ?= OFF
JOBS ?= $(shell nproc)
CMAKE_GENERATOR := $(if $(shell command -v ninja),Ninja,Unix Makefiles)
export PYTHONPATH := $(CURDIR)/python:$(CURDIR)/bench:$(PYTHONPATH)

.PHONY: heal build-local test test-cpp test-python bench bench-profile format clean

heal:
	@PYTHON=$(PYTHON) bash scripts/heal.sh

build-local:
	@PYTHON=$(PYTHON) bash scripts/heal.sh --quiet
	cmake -S . -B $(BUILD_DIR) -G "$(CMAKE_GENERATOR)" -DCMAKE_BUILD_TYPE=Release \
	  -DBSK_LEAN=$(LEAN) -DPython_EXECUTABLE=$$(command -v $(PYTHON)) $(CMAKE_ARGS)
	cmake --build $(BUILD_DIR) -j $(JOBS)

test-cpp: build-local
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

test-python: build-local
	$(PYTHON) -m pytest -q tests/python $(PYTEST_ARGS)

test: build-local
	@rc=0; \
	(cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)) || rc=1; \
	$(PYTHON) -m pytest -q tests/python $(PYTEST_ARGS) || rc=1; \
	exit $$rc

bench: build-local
	$(PYTHON) bench/run_bench.py $(BENCH_ARGS)

bench-profile: build-local
	$(PYTHON) bench/profile.py $(BENCH_ARGS)

format:
	clang-format -i $$(git ls-files '*.h' '*.cpp' '*.cu' '*.cuh')

clean:
	rm -rf $(BUILD_DIR) python/blackwell_sparsek/_C*.so
