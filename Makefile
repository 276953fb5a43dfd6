# Wattshare: every target installs what it needs through `setup` (idempotent).
# Two commands for a newcomer: `make demo` and `make test`.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/node_modules/.bin:$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup setup-gateway test demo bench fuzz check firmware clean help hil-bench hil-bench-virtual

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

setup: $(VENV)/.installed node_modules/.installed chromium ## install Python (.venv), Node (node_modules) and Debian chromium (browser tests)

$(VENV)/.installed: requirements.lock pyproject.toml
	@echo "setup: Python environment in $(VENV) (pinned by requirements.lock)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# A gateway (Raspberry Pi OS Bookworm, 64-bit): the runtime only, no browser, no test
# tools; Node (20) only with CHAIN=1, for the embedded local chain (anvil). docs/gateway.md
setup-gateway: $(VENV)/.gateway-installed $(if $(CHAIN),node_modules/.gateway-installed) ## gateway runtime only (no browser, no test tools); CHAIN=1 adds Node's embedded anvil and ECharts

$(VENV)/.gateway-installed: requirements-gateway.lock pyproject.toml
	@echo "setup-gateway: runtime Python environment in $(VENV) (requirements-gateway.lock)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-gateway.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

NODE_20 := node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || { \
	  echo "setup: Node $$(node --version) is too old: Node 20 is needed (docs/gateway.md)"; exit 1; }

node_modules/.installed: package.json package-lock.json
	@$(NODE_20)
	@echo "setup: Node tools in node_modules (pinned by package-lock.json)"
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# A gateway's Node packages: package.json's dependencies only (anvil, ECharts), not the
# developer's (the MicroPython VM, playwright). A developer's full install already has them.
node_modules/.gateway-installed: package.json package-lock.json
	@$(NODE_20)
	@if [ -e node_modules/.installed ] && [ node_modules/.installed -nt package-lock.json ]; then \
	  echo "setup-gateway: node_modules already holds the full developer install"; \
	else \
	  echo "setup-gateway: anvil and ECharts in node_modules (package-lock.json, no devDependencies)"; \
	  npm ci --omit=dev --no-audit --no-fund --loglevel=error; \
	fi
	touch $@

# The status-page tests drive Debian's chromium headless (playwright-core from
# node_modules); a browser download is not possible here, the distro package is.
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null || { \
	  echo "setup: installing Debian chromium for the browser tests (needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: setup ## run every test (CPython, MicroPython VM, contracts, hardware-in-the-loop on emulated devices)
	$(PY) -m pytest $(PYTEST_ARGS)

# The hardware-in-the-loop suite on the boards of a bench (docs/hil.md): BENCH names the
# bench file (default hil-bench.toml at the root); HIL_TESTS narrows the scenarios.
BENCH ?= hil-bench.toml
HIL_TESTS ?= hil_tests
hil-bench: setup ## hardware-in-the-loop scenarios on real boards (BENCH=file, default hil-bench.toml; docs/hil.md)
	@$(PY) -m hil_tests.bench_mode check $(BENCH)
	WATTSHARE_HIL=bench WATTSHARE_BENCH_CONFIG=$(abspath $(BENCH)) $(PY) -m pytest $(HIL_TESTS) $(PYTEST_ARGS)

RACK ?= out/hil-rack
hil-bench-virtual: setup ## make hil-bench on a rack of virtual boards (RACK=dir, default out/hil-rack), no hardware needed
	$(PY) -m hil_tests.bench_mode virtual-rack $(RACK)
	$(MAKE) --no-print-directory hil-bench BENCH=$(RACK)/bench.toml

demo: setup ## run the most complete end-to-end path on emulated hardware
	$(PY) -m tools.demo

bench: setup ## run the benchmarks; JSON under out/bench/, summary in docs/benchmarks.md
	$(PY) -m bench

SECONDS ?= 600
fuzz: setup ## coverage-guided fuzzing of every parser facing the outside (SECONDS=N in all, default 600); out/bench/fuzz.json
	$(PY) -m tools.fuzz --seconds $(SECONDS) --json out/bench/fuzz.json

check: setup ## lint and type-check (ruff, mypy; firmware against micropython-esp32-stubs)
	$(VENV)/bin/ruff check gateway tools firmware bench hil_tests
	$(VENV)/bin/mypy gateway tools
	$(PY) -m tools.check_firmware

firmware: setup ## compile every firmware file with mpy-cross for the ESP32 and build out/firmware/
	$(PY) -m tools.build_firmware

clean: ## remove build output (keeps installed dependencies)
	rm -rf out build
