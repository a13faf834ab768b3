# Stowage: the two commands a person needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint typecheck pytest demo bench clean podresources lock

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint --failure-threshold style Dockerfile.agent Dockerfile.optimizer

typecheck: $(STAMP)
	$(BIN)/mypy --strict agent optimizer shared demo tools

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/stowage-demo

bench: $(STAMP)
	$(BIN)/python -m bench.contract
	$(BIN)/python -m bench.agent
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.gang
	$(BIN)/python -m bench.cycle
	$(BIN)/python -m bench.fill --write
	$(BIN)/python -m bench.fill_waste
	$(BIN)/python -m bench.images

# The images' locks (requirements/*.txt, installed by hash), resolved for Linux and Python 3.11
# on any CPU. Run after changing pyproject.toml's dependencies; tests/test_locks.py checks them.
LOCK := $(BIN)/uv pip compile --universal --python-version 3.11 --generate-hashes --quiet \
	--custom-compile-command 'make lock'
lock: $(STAMP)
	$(LOCK) pyproject.toml -o requirements/agent.txt
	$(LOCK) pyproject.toml --extra optimizer --extra postgres -o requirements/optimizer.txt
	$(LOCK) requirements/build.in -o requirements/build.txt

# Regenerate the kubelet PodResources stubs from agent/podresources/api.proto.
podresources: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
		agent/podresources/api.proto

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
