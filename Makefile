# One command to set up and run the demo audit, one to run the tests (see README.md).
# Both install the exact versions in requirements.lock: what CI tested, on every machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.huref-installed
LOCK := requirements.lock
# The CPU build of PyTorch, pinned: an unpinned torch pulls a multi-GB CUDA build.
# `make test-latest TORCH=torch` tries the newest torch as well.
TORCH ?= torch==2.13.0

.PHONY: demo test lint setup lock test-latest clean-venv

# A new lock or pyproject.toml rebuilds the environment from nothing, so it holds the lock and only it.
$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$$(grep -E '^pip==' $(LOCK))"
	$(BIN)/python -m pip install -q -r $(LOCK)
	# huref itself, built with the locked setuptools and no dependency resolution of its own
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/huref demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check huref tests bench
	$(BIN)/ruff format --check huref tests bench
	$(BIN)/mypy

# Resolve pyproject.toml's ranges afresh in a throw-away environment and write what was installed.
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PY) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip setuptools; \
	"$$tmp/venv/bin/python" -m pip install -q "$(TORCH)"; \
	"$$tmp/venv/bin/python" -m pip install -q -e ".[dev]"; \
	{ echo "# huref's locked environment: \`make lock\` writes it (see docs/dependencies.md)."; \
	  echo "# Python $$("$$tmp/venv/bin/python" -c 'import platform; print(platform.python_version())'), resolved $$(date -u +%Y-%m-%d)."; \
	  "$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'; \
	} > "$$tmp/lock"; \
	mv "$$tmp/lock" $(LOCK); \
	echo "wrote $(LOCK): $$(grep -cE '^[A-Za-z0-9]' $(LOCK)) packages; run make test before committing it"

# The suite on the newest releases the registry serves today, without the lock, in a throw-away
# environment and with a zoo built by those releases: a break upstream shows here first. torch stays
# at $(TORCH) (a constraint: the eager upgrade would otherwise take the newest, a CUDA build).
test-latest:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PY) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip setuptools; \
	echo "$(TORCH)" > "$$tmp/torch.txt"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade -c "$$tmp/torch.txt" "$(TORCH)"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -c "$$tmp/torch.txt" -e ".[dev]"; \
	differ=$$("$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/' \
	  | grep -vxFf <(grep -E '^[A-Za-z0-9]' $(LOCK)) || true); \
	echo "test-latest: packages that differ from $(LOCK): $${differ:-none}" | tr '\n' ' '; echo; \
	HUREF_ZOO_CACHE="$$tmp/zoo" "$$tmp/venv/bin/python" -m pytest

clean-venv:
	rm -rf $(VENV)
