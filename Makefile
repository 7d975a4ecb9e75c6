# Two commands: `make demo` and `make test`. Each creates the environment when it is missing.
# the interpreter itself, not a version manager's shim (uv would rebuild .venv for a path that differs from its own)
PY   ?= $(shell p=$$(command -v python3.11 || command -v python3); $$p -c 'import sys; print(sys.executable)')
UV   := .tools/bin/uv
VENV := .venv
WS   ?= demo_workspace

.PHONY: setup bench-setup browser demo test bench clean

$(UV):
	$(PY) -m venv .tools
	.tools/bin/pip install -q "uv==0.13.9"

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PY)
	touch $@

setup: $(VENV)/.synced

# The `bench` dependency group (lifetimes, for the CDNOW sample bench/real_data.py reads), on top of `setup`;
# redone after every re-sync of `setup`, which removes what the lock's default groups do not list. No --python: the
# environment exists by then (naming a pyenv shim makes uv 0.13.9 rebuild the whole environment).
$(VENV)/.bench-synced: $(VENV)/.synced
	$(UV) sync --frozen --inexact --group bench
	touch $@

bench-setup: $(VENV)/.bench-synced

# The console's browser tests drive Debian's chromium through Playwright (`playwright install` cannot download
# browsers here). Installed when missing and this is root on Debian; elsewhere the browser tests skip and say why
# (CI sets PERSONA_REQUIRE_BROWSER=1, which makes them mandatory).
# fonts-noto-cjk: the console's Chinese pages (and the test run's screenshots of them) need a CJK font.
browser:
	@if command -v chromium >/dev/null 2>&1 && [ -d /usr/share/fonts/opentype/noto ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium and a CJK font for the browser tests ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; \
	else echo "note: no chromium and no root to install it: the console's browser tests will skip"; fi

demo: setup
	$(VENV)/bin/persona demo --workspace $(WS)

test: setup browser
	$(VENV)/bin/pytest

bench: setup
	$(VENV)/bin/python bench/identity_bench.py

clean:
	rm -rf $(VENV) .tools $(WS)
