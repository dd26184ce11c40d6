# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint clean

install: $(STAMP) $(VENV)/.system-packages

# Reinstalls only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# System packages the sandboxes need (bubblewrap; QEMU for microVMs), from Debian's packages.
$(VENV)/.system-packages: scripts/system-packages.sh $(wildcard vmdriver/guest/host-packages.sh) | $(STAMP)
	scripts/system-packages.sh
	touch $@

# Chromium, for the browser tests only.
$(VENV)/.browser: scripts/system-packages.sh | $(STAMP)
	scripts/system-packages.sh browser
	touch $@

# nginx, for the tests of deploy/nginx/ (they start their own on loopback ports).
$(VENV)/.nginx: scripts/system-packages.sh | $(STAMP)
	scripts/system-packages.sh nginx
	touch $@

# promtool and prometheus, for the tests of deploy/ and of the autoscaler's Prometheus source
# (taken from Debian's package; no Prometheus service is installed or started).
$(VENV)/.promtool: scripts/promtool.sh | $(STAMP)
	scripts/promtool.sh
	touch $@

run: install
	$(BIN)/python -m config.launch

test: install $(VENV)/.browser $(VENV)/.promtool $(VENV)/.nginx
	$(BIN)/python scripts/test.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var
