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

.PHONY: install demo test bench clean device-wheels

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

# Wheels of what the GPU machine's image lacks (Python 3.12 there), for bench/gpu_checks.sh.
device-wheels: $(STAMP)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1 \
		pycocotools pyspng hotcoco scipy  # scipy (~35 MB): Mask2Former's matcher, bench/mask2former.py
	$(PYTHON) -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only: build it

clean:
	rm -rf .venv outputs multirun .cache .pytest_cache
