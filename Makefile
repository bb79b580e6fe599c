# silson-agent — developer entry points. A fresh machine needs only Python 3.11, make and apt.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench dist lint fuzz clean deb

$(STAMP): pyproject.toml
	[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/silson-agent demo

# Debian packages a target needs are installed by that target (a fresh machine needs nothing by hand).
APT_GET := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)

test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { $(APT_GET) update -qq && $(APT_GET) install -y -qq chromium; }
	$(BIN)/python -m pytest -n auto -q

bench: $(STAMP)
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { $(APT_GET) update -qq && $(APT_GET) install -y -qq nginx; }
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check agent tests installer
	$(BIN)/ruff format --check agent tests installer
	$(BIN)/mypy agent

fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz.run_all

dist: $(STAMP)
	$(BIN)/python installer/build.py

# A .deb of the one-folder build (installer/deb/); `make test` never builds it (too slow).
deb: dist
	@command -v dpkg-deb >/dev/null 2>&1 || { $(APT_GET) update -qq && $(APT_GET) install -y -qq dpkg; }
	$(BIN)/python installer/deb/build_deb.py

clean:
	rm -rf $(VENV) build dist demo .pytest_cache
