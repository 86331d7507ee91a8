# The one task runner. `make help` lists the targets (from the `## ` comments).
include stack.env

SHELL := /bin/bash
PY := .venv/bin/python
UV := .tools/uv/bin/uv
export UV_PROJECT_ENVIRONMENT := .venv
export UV_PYTHON_DOWNLOADS := never
# Byte-compile at install: where PYTHONDONTWRITEBYTECODE=1 is set (CI images, containers, this kind of machine)
# nothing is ever cached at import, and `import livekit.agents` measured 5.3 s instead of 2.8 s.
export UV_COMPILE_BYTECODE := 1
DEVSTACK := $(PY) -m devstack

.DEFAULT_GOAL := help
.PHONY: help install tools lk browser-deps net-deps bench bench-audio bench-canary bench-capacity bench-drills cluster-up cluster-down paths-up paths-down paths remote-lab-up remote-lab-down env up down status logs health check-config bootstrap backend worker test lint fmt clean

COMPOSECHECK := .tools/composecheck
ACTIONLINT := .tools/actionlint-$(ACTIONLINT_VERSION)/actionlint
BOOTSTRAP_ARGS ?=
PATHS_ARGS ?=

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv .tools/uv
	.tools/uv/bin/pip install --quiet uv==$(UV_VERSION)

.venv/.installed: $(UV) uv.lock pyproject.toml backend/pyproject.toml agent-runtime/pyproject.toml devstack/pyproject.toml bootstrap/pyproject.toml pytest-livekit-harness/pyproject.toml examples/pitch-agent/pyproject.toml
	$(UV) sync --locked --quiet
	@# The workspace's own packages are installed editable, outside what uv compiles: compile them too.
	@$(PY) -m compileall -q backend/backend agent-runtime/agent_runtime devstack/devstack bootstrap/bootstrap pytest-livekit-harness/livekit_harness_pytest examples/pitch-agent/pitch_agent
	@touch $@

# The same lock for Debian's python3, root-owned and 0755: the interpreter the service accounts run the
# participant and agent processes with (.venv's links under /root here, which they cannot enter).
SERVICE_PYTHON := /usr/bin/python3
.venv-services/.installed: .venv/.installed
	@if [ -x $(SERVICE_PYTHON) ]; then \
		UV_PROJECT_ENVIRONMENT=.venv-services $(UV) sync --locked --quiet --no-dev --python $(SERVICE_PYTHON) && \
		chmod -R go+rX,go-w .venv-services && touch $@; \
	else echo "no $(SERVICE_PYTHON): participants and agents on lab hosts cannot run unprivileged (their runs say so)"; fi

install: .venv/.installed .venv-services/.installed ## Create .venv (and .venv-services, for the service accounts) from the lock file (uv.lock)

$(COMPOSECHECK): tools/composecheck/main.go tools/composecheck/go.mod tools/composecheck/go.sum
	cd tools/composecheck && CGO_ENABLED=0 go build -o ../../$(COMPOSECHECK) .

$(ACTIONLINT):
	CGO_ENABLED=0 GOBIN=$(abspath $(dir $(ACTIONLINT))) go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

LK_PINNED := .tools/lk-$(LIVEKIT_CLI_VERSION)/lk
$(LK_PINNED):
	@scripts/build-lk.sh $(LIVEKIT_CLI_VERSION) $(dir $(LK_PINNED))

lk: $(LK_PINNED) ## Build the lk CLI at the pinned tag into .tools/ (cgo; installs its Debian prerequisites as root)

frontend/node_modules/.package-lock.json: frontend/package.json frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund --loglevel=error

browser-deps: frontend/node_modules/.package-lock.json ## Chromium (Debian package) and livekit-client (npm ci) for --browser
	@scripts/install-chromium.sh

tools: $(COMPOSECHECK) $(ACTIONLINT) ## Build the Go checkers the tests use (Compose's parser, actionlint)

env: install ## Create missing .env files (0600) from the examples and generate dev passwords (never overwrites)
	@$(DEVSTACK) env

up: install env ## Start the stack: Docker Compose if an engine answers, else natively
	@$(DEVSTACK) up

down: install ## Stop exactly what `make up` started
	@$(DEVSTACK) down

status: install ## Show each service's state and health
	@$(DEVSTACK) status

logs: install ## Show the last lines of each service's log
	@$(DEVSTACK) logs

health: install ## Check PostgreSQL, Redis and LiveKit; exit 0 only if all are up
	@$(DEVSTACK) health

check-config: install ## Check docker/livekit.yaml before any server starts
	@$(DEVSTACK) check-config

bootstrap: up ## Everything from a fresh clone: install, stack up, then the verified report
	$(PY) -m bootstrap --verbose $(BOOTSTRAP_ARGS)

backend: install env ## Serve the backend (webhook receiver + /healthz) on port $(WEBHOOK_PORT)
	$(PY) -m backend --port $(WEBHOOK_PORT)

worker: install env ## Run the echo agent's worker until Ctrl-C
	$(PY) -m agent_runtime

test: install tools browser-deps net-deps ## Lint, type-check, then every test (starts the real stack when down; installs Chromium for the browser tests)
	$(UV) run --locked --no-sync ruff check .
	$(UV) run --locked --no-sync ruff format --check .
	$(UV) run --locked --no-sync mypy
	$(PY) -m pytest --durations=20

lint: install ## ruff + mypy only
	$(UV) run --locked --no-sync ruff check .
	$(UV) run --locked --no-sync mypy

fmt: install ## Format the code with ruff
	$(UV) run --locked --no-sync ruff format .
	$(UV) run --locked --no-sync ruff check --fix .

cluster-up: install env ## Two livekit-server nodes sharing Redis (Compose profile `cluster`, or native)
	@$(DEVSTACK) cluster-up

cluster-down: install ## Remove the cluster: its nodes and Redis (natively its hosts too, as cluster-up recorded them)
	@$(DEVSTACK) cluster-down

net-deps: install ## What the network and canary tests need (as root): iproute2, nftables, nginx, libnss3-tools, prometheus, livekit-server
	@if [ "$$(id -u)" = 0 ]; then $(DEVSTACK) install-native; \
	else echo "not root: the network tests (namespaces: paths, cluster, drills) will be skipped"; fi

paths-up: install env ## The paths lab (root): a client host, and a node host with its own livekit-server behind a TLS front
	@$(DEVSTACK) paths-up

paths-down: install ## Remove the paths lab
	@$(DEVSTACK) paths-down

paths: paths-up ## A client on another host (the paths lab) over each network path: udp, turn-udp, tcp, turn-tls, wss
	$(PY) -m bootstrap --paths $(PATHS_ARGS)

remote-lab-up: install ## The remote lab (root): a deployment this code did not configure, its own Redis, TLS front, local CA
	@$(DEVSTACK) remote-lab-up

remote-lab-down: install ## Remove the remote lab
	@$(DEVSTACK) remote-lab-down

.PHONY: mutation
mutation: install ## Mutation testing (mutmut) of the protection modules against their unit tests; not in CI (~4 min)
	@scripts/mutation.sh

bench: install ## Benchmark the running stack: load mode vs lk perf, warm verdict vs manual lk, data-plane figures
	$(PY) -m bench.bench

bench-canary: install env ## The canary's cost: CPU at a 60 s interval, RSS over 100 runs, /metrics during a run (holds the integration lock)
	flock /tmp/lkh-integration.lock $(PY) -m bench.canary

bench-capacity: install env ## The capacity curve: rooms one echo worker holds at once, cost per room, the knee (holds the integration lock)
	flock /tmp/lkh-integration.lock $(PY) -m bench.capacity

bench-audio: install env ## Audio quality against injected loss (root, paths lab): 0/2/5/10 % random and 5 % bursts, receivers vs nft counters, MOS (holds the integration lock)
	flock /tmp/lkh-integration.lock $(PY) -m bench.audio_quality

bench-drills: install env ## Benchmark the cluster drills (root): each 5 times, p50/max of every figure
	@$(DEVSTACK) install-native
	$(PY) -m bench.drills

clean: down ## Stop the stack and delete runtime data (.runtime/)
	rm -rf .runtime
