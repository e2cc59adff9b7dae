# telemetrics-client: build, test, demo and install.
#   make venv     .venv with the package (editable) and the test tools
#   make test     the whole test suite
#   make demo     the pipeline end to end in user mode
#   make bench    benchmarks; they print figures
#   make lint     ruff and mypy
#   make install  DESTDIR=… PREFIX=… as a distribution package would

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PREFIX ?= /usr
DESTDIR ?=
# What the build needs (systemd-python compiles against libsystemd) and what the tests use:
# journal files (systemd-journal-remote), man pages (man-db, groff-base), PostgreSQL for the
# collector, openssl for TLS certificates, gdb and elfutils to check crash backtraces, nginx
# for HTTP/2 delivery.  Tests whose tool is missing are skipped with the reason.
APT_PACKAGES := libsystemd-dev pkg-config gcc systemd systemd-journal-remote man-db groff-base \
	postgresql openssl gdb elfutils nginx-light
PYTEST_ARGS ?=

.PHONY: venv deps test demo bench lint typecheck install clean

# Both distributions, editable: the client (pyproject.toml) and the collector (collector/).
$(VENV)/.stamp: pyproject.toml collector/pyproject.toml
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' -e ./collector
	touch $@

venv: $(VENV)/.stamp

# Debian packages the build needs (systemd-python compiles against libsystemd).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
			{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
		else \
			echo "missing Debian packages:$$missing (run 'make venv' as root, or install them)" >&2; \
		fi; \
	fi

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv
	$(PY) packaging/demo.py

bench: venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: venv typecheck
	$(VENV)/bin/ruff check telemetry daemons probes collector packaging tests bench

# mypy cannot follow setuptools' package-dir mapping (daemons/ and probes/ install as
# telemetry.daemons and telemetry.probes), so it reads a tree of links shaped like the
# installed package, rebuilt on every run: build/typecheck/telemetry/{*.py,daemons,probes}.
TYPECHECK_TREE := build/typecheck
typecheck: venv
	@rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)/telemetry
	@for f in telemetry/*.py; do ln -s ../../../$$f $(TYPECHECK_TREE)/telemetry/; done
	@ln -s ../../../daemons $(TYPECHECK_TREE)/telemetry/daemons
	@ln -s ../../../probes $(TYPECHECK_TREE)/telemetry/probes
	MYPYPATH=$(TYPECHECK_TREE):collector:packaging $(VENV)/bin/mypy \
		-p telemetry -p telemetry_collector -p telemetry_install

# Installs into $(DESTDIR)$(PREFIX) as a distribution package would (packaging/telemetry_install/).
# The programs run with INSTALL_PYTHON (their #! line); the package goes where that
# interpreter looks below PREFIX, or to PYTHONDIR.  After a real install (no DESTDIR):
# systemd-sysusers; systemd-tmpfiles --create; sysctl --system; systemctl daemon-reload.
SYSCONFDIR ?= /etc
LOCALSTATEDIR ?= /var
RUNDIR ?= /run
INSTALL_PYTHON ?= /usr/bin/python3
PYTHONDIR ?=

install: venv
	PYTHONPATH=packaging $(PY) -m telemetry_install install --destdir "$(DESTDIR)" --prefix "$(PREFIX)" \
		--sysconfdir "$(SYSCONFDIR)" --localstatedir "$(LOCALSTATEDIR)" --rundir "$(RUNDIR)" \
		--python "$(INSTALL_PYTHON)" $(if $(PYTHONDIR),--pythondir "$(PYTHONDIR)")

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
