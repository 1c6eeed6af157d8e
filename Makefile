# The two commands a newcomer needs: `make demo` and `make test`. Both set up the host first.
#   make test HOST=newest               # the newest ComfyUI tree in ../shared/hosts (or HOST=/path/to/ComfyUI.tar.gz)
#   make test HOST=newest FRONTEND=newest PYTEST_ARGS="-m browser"   # with the newest frontend package
SHELL := /bin/bash
# The host's python with the test tools layered on (scripts/setup.sh writes .host.env).
HOSTPY = $(shell . ./.host.env 2>/dev/null && echo $$SD35WB_TOOLS_PYTHON)
PYTEST_ARGS ?=
HOST ?=
FRONTEND ?=
SETUP_ARGS = $(if $(HOST),--host $(HOST)) $(if $(FRONTEND),--frontend $(FRONTEND))

.PHONY: setup test demo lint bench unit test-realsize
setup:
	@bash scripts/setup.sh $(SETUP_ARGS)

lint: setup
	@$(HOSTPY) -m ruff check .

# test: setup plus Debian's chromium for the browser tier (apt-get: root or sudo; demo never needs it), plus
# ComfyUI-Manager + comfy-cli in their own cached venv for the install tests (not needed by demo either)
test:
	@bash scripts/setup.sh $(SETUP_ARGS) --browser
	@bash scripts/install_tools.sh
	@HOST="$(HOST)" FRONTEND="$(FRONTEND)" bash scripts/test.sh $(PYTEST_ARGS)

unit:  # no host needed: the unit tier imports no ComfyUI
	@bash scripts/unit.sh $(PYTEST_ARGS)

demo: setup
	@$(HOSTPY) -m tools.demo

bench: setup
	@for f in bench/*.py; do echo "== $$f"; $(HOSTPY) $$f || exit 1; done

test-realsize: setup  # SD3.5 Medium and Large (fp8) at their real structure (tools/real_models.py): ~15 GiB peak, alone on the machine
	@flock -x /tmp/sd35wb-mem.lock env HOST="$(HOST)" FRONTEND="$(FRONTEND)" bash scripts/test.sh -m realsize $(PYTEST_ARGS)
