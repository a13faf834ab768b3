# Stowage: the two commands a person needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint typecheck pytest demo bench clean podresources

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
	$(BIN)/mypy --strict agent optimizer shared demo

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

# Regenerate the kubelet PodResources stubs from agent/podresources/api.proto.
podresources: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
		agent/podresources/api.proto

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
