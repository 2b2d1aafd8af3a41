# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: setup demo test test-slow lint docs bench clean

setup: $(STAMP)

# pip byte-compiles on one core; compileall -j 0 on all of them (a fresh setup took 80 s
# instead of 96 on 2 cores). Byte-compiling is not optional: with PYTHONDONTWRITEBYTECODE
# set, as on CI machines, nothing would be cached and every process would compile again.
# (It reports files of newer Python syntax inside packages, which pip skips too.)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(BIN)/python -m mapper.cli.demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile deploy/triton.Dockerfile
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check . && $(BIN)/lint-imports && $(BIN)/ruff format --check . && $(BIN)/hadolint Dockerfile deploy/triton.Dockerfile
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: setup
	$(BIN)/python benchmarks/bench_maps.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_payload.py
	$(BIN)/python benchmarks/bench_service.py
	$(BIN)/python benchmarks/bench_service.py --pin
	$(BIN)/python benchmarks/bench_triton.py
	$(BIN)/python benchmarks/bench_migrate.py
	$(BIN)/python benchmarks/bench_imports.py
	$(BIN)/python benchmarks/bench_replicas.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache out .cache
