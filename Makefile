# Two entry points for a new user; each sets itself up on a fresh Debian machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup system-deps lint typecheck protos clean install

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version' 
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: run 'apt-get install -y python3-venv' (as root)"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: system-deps $(STAMP)

# System packages used by the tests (real brokers started on free loopback ports).
system-deps:
	@bash tools/system_deps.sh

# The main job: a simulated drive across two borders (France → Luxembourg → Germany), end to end.
demo: setup
	$(VENV)/bin/tcu demo --scenario border

test: setup
	$(VENV)/bin/python tools/gen_protos.py --check
	$(VENV)/bin/python tools/check_paths.py
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

protos: $(STAMP)
	$(VENV)/bin/python tools/gen_protos.py

# A service install (as root): tcu in its own venv under PREFIX, the systemd units and the tcu user.
# Then: systemd-sysusers && systemctl daemon-reload && systemctl enable --now tcu-agent (or tcu-ingest).
PREFIX ?= /opt/tcu
SYSTEMD_DIR ?= /etc/systemd/system
SYSUSERS_DIR ?= /usr/lib/sysusers.d
install:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version'
	test -d $(PREFIX) || $(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install --quiet .
	$(PREFIX)/bin/tcu units --install $(DESTDIR)$(SYSTEMD_DIR) --sysusers $(DESTDIR)$(SYSUSERS_DIR)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
