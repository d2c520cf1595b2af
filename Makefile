# ToM node. The two set-up commands of the README are `make node` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
# Two stamps: RUNTIME is the node alone (`pip install -e .`, what `make node` needs);
# STAMP adds the development tools (`.[dev]`: pytest, ruff, mypy, ...) for the test, lint and
# bench targets. STAMP depends on RUNTIME, so `make test` on a fresh clone does all the
# set-up, and `make node` then `make test` adds only the tools.
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed

.PHONY: node down status image test pytest lint contract docs bench lab mutate chaos clean

$(RUNTIME): pyproject.toml
	$(PY) -m venv $(VENV)
	$(PIP) -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PIP) -e '.[dev]'
	touch $(STAMP)

## node: install the node (runtime only), create ~/.tom (identity, config, endpoints) if
## needed, start all services
node: $(RUNTIME)
	$(BIN)/tom node up

down: $(RUNTIME)
	$(BIN)/tom node down

status: $(RUNTIME)
	$(BIN)/tom node status

## image: the docker image tom-node:latest (docker-compose.yml). The wheels are built here, on the
## host, into .wheels/ (deps: the dependencies; app: the node), and the image build installs
## them with --no-index: it needs no network. BASE=... picks another base (deploy/ci-docker.sh)
BASE ?= python:3.11-slim
IMAGE ?= tom-node:latest
# IMAGE_PY: the interpreter whose pip builds the wheels; IMAGE_DEPS: what to set up first
# (tests/e2e/test_compose_docker.py passes its own interpreter and nothing to set up)
IMAGE_PY ?= $(BIN)/python
IMAGE_DEPS ?= $(RUNTIME)
image: $(IMAGE_DEPS)
	rm -rf .wheels
	$(IMAGE_PY) -m pip wheel --quiet --disable-pip-version-check --wheel-dir .wheels/deps .
	mkdir -p .wheels/app && mv .wheels/deps/tom_node-*.whl .wheels/app/
	docker build --build-arg BASE=$(BASE) -t $(IMAGE) .

## test: the whole suite (lint, then pytest); .ci/run calls exactly this
test: lint pytest

pytest: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

## contract: the black-box contract suite (TOM_CONTRACT_CMD selects the implementation)
contract: $(STAMP)
	$(BIN)/pytest tests/contract

## docs: regenerate the message tables of docs/protocol.md from the wire models
docs: $(STAMP)
	$(BIN)/python -m shared.wire.docgen docs/protocol.md

bench: $(STAMP)
	$(BIN)/python -m bench.bench_bus
	$(BIN)/python -m bench.bench_crypto
	$(BIN)/python -m bench.bench_transport

## mutate: mutation testing of the security checks: the transport's one-line mutations against
## the tests that must catch them, then mutmut on crypto and router (report: bench/mutation.md)
mutate: $(STAMP)
	$(BIN)/python -m bench.transport_mutations
	$(BIN)/python -m bench.mutate

## chaos: three nodes, 200 rounds of random SIGKILLs (about 20 minutes); nothing may be lost,
## doubled or left unconverged 15 s after a restart (report: bench/results/chaos.md)
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos --rounds 200 --report bench/results/chaos.md

## lab: two whole nodes behind NATs in network namespaces find each other through a relay,
## punch a direct path and chat (needs root, iproute2 and iptables; tom/lab.py)
lab: $(RUNTIME)
	$(BIN)/python -m tom.lab demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants
