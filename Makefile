# mailsrv: `make run` serves a demo setup in ./var, `make test` runs every test.
PYTHON ?= python3
# The demo's ports: PORT_BASE + 525, 587, 465, 143, 993, 110, 995, 80, 443, 81 (`make run PORT_BASE=3000` the first time).
PORT_BASE ?= 2000
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv build run test test-only lint peers bench bench-smoke bench-micro fuzz clean

all: build

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet 'cython>=3.0' setuptools wheel    # build_ext --inplace runs in the venv
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Compile the Cython speedups in place; a broken .pyx is an error here.
build: $(STAMP)
	MAILSRV_REQUIRE_SPEEDUPS=1 $(BIN)/python setup.py --quiet build_ext --inplace

run: build
	@if test -f var/mailsrv.toml; then cat var/demo-users.txt 2>/dev/null || true; \
	else $(BIN)/mailsrv init --dir var --demo --port-base $(PORT_BASE); fi
	exec $(BIN)/mailsrv serve -c var/mailsrv.toml

# Third-party peers the end-to-end tests drive (installed only when root and missing).
peers:
	@bash tools/install-peers.sh

lint: $(STAMP)
	$(BIN)/ruff check mailsrv tests bench fuzz
	$(BIN)/mypy
	$(BIN)/lint-imports

test: build peers lint test-only

# The suite with the compiled modules, then the speedups tests with the pure-Python twins.
test-only:
	MAILSRV_REQUIRE_SPEEDUPS=1 $(BIN)/python -m pytest -q -p no:cacheprovider
	MAILSRV_NO_SPEEDUPS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m speedups

# Every scenario at full size (under 15 minutes on 2 cores); the table on stdout, the JSON in bench/out/ (ignored by git).
bench: build
	$(BIN)/python -m bench all --json bench/out/results.json

# Every scenario at smoke size (what make test runs): checks the harness, measures nothing.
bench-smoke: build
	$(BIN)/python -m bench all --size smoke

bench-micro: build
	$(BIN)/python -m pytest bench/micro --benchmark-only -q

# Fuzz every parser with atheris for FUZZ_SECONDS each, one target at a time, under nice (about 20 minutes
# at the default); crash inputs in fuzz/crashes/, the grown corpus in fuzz/corpus/ (both ignored by git).
# make test runs a 2-second slice of each (tests/fuzz). README.md, Development: Fuzzing.
FUZZ_SECONDS ?= 60
fuzz: build
	nice -n 10 $(BIN)/python -m fuzz all --seconds $(FUZZ_SECONDS)

clean:
	rm -rf build $(VENV) mailsrv/_speedups/*.so mailsrv/_speedups/*_c.c
