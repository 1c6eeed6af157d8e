# The two commands a newcomer needs: `make demo` and `make test`. Both set up the host first.
SHELL := /bin/bash
HOSTPY = $(shell . ./.host.env 2>/dev/null && echo $$COMFYUI_PYTHON)
PYTEST_ARGS ?=

.PHONY: setup test demo lint bench unit
setup:
	@bash scripts/setup.sh

lint: setup
	@$(HOSTPY) -m ruff check .

test: setup
	@bash scripts/test.sh $(PYTEST_ARGS)

unit:  # no host needed: the unit tier imports no ComfyUI
	@bash scripts/unit.sh $(PYTEST_ARGS)

demo: setup
	@$(HOSTPY) -m tools.demo

bench: setup
	@for f in bench/*.py; do echo "== $$f"; $(HOSTPY) $$f || exit 1; done
