# Two entry points for a fresh clone: `make demo` (train + evaluate on synthetic data) and `make test`.
# Both create ./.venv when no virtual environment is active, and install the project into it once.
SHELL := /bin/bash
ifdef VIRTUAL_ENV
PYTHON := python
STAMP := $(VIRTUAL_ENV)/.panfpn-installed
else
PYTHON := .venv/bin/python
STAMP := .venv/.panfpn-installed
endif
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
	$(PYTHON) -m pip install --upgrade pip >/dev/null
	$(PYTHON) -m pip install -e ".[dev]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) tools/train.py experiment=synthetic_cpu solver.max_iter=$${DEMO_ITERS:-600}

test: $(STAMP)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf .venv outputs multirun .cache .pytest_cache
