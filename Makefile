# telemetrics-client: build, test, demo, install and package.
#   make venv          .venv with the package (editable) and the test tools
#   make test          ruff, mypy and the whole test suite
#   make test-systemd  the suite under a real systemd: the .debs in a booted Debian 12 container
#   make demo          the pipeline end to end in user mode
#   make bench         benchmarks; they print figures
#   make lint          ruff and mypy
#   make install       DESTDIR=… PREFIX=… as a distribution package would (no network, no apt)
#   make uninstall     remove what make install installed (same DESTDIR and PREFIX)
#   make deb           the Debian packages (client and collector) in dist/, checked by lintian

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PREFIX ?= /usr
DESTDIR ?=
# What the build needs (systemd-python compiles against libsystemd) and what the tests use:
# journal files (systemd-journal-remote), man pages (man-db, groff-base), PostgreSQL for the
# collector, openssl for TLS certificates, gdb and elfutils to check crash backtraces (with Go
# and clang builds among the crashing programs), nginx for HTTP/2 delivery, nats-server
# (JetStream) for the collector's NATS dispatcher, wrk as the collector benchmark's load
# generator, chromium and its chromedriver for the collector's web views.  Tests whose tool
# is missing are skipped with the reason.
APT_PACKAGES := libsystemd-dev pkg-config gcc systemd systemd-journal-remote man-db groff-base \
	postgresql openssl gdb elfutils dwz nginx-light golang-go clang nats-server wrk chromium chromium-driver
PYTEST_ARGS ?=

.PHONY: venv deps test test-systemd demo bench lint typecheck import-tree install install-collector \
	uninstall uninstall-collector deb deb-deps clean

# Both distributions, editable: the client (pyproject.toml) and the collector (collector/)
# with every dispatcher's client library (its extras nats, kafka, zmq).
$(VENV)/.stamp: pyproject.toml collector/pyproject.toml
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' -e './collector[all,test]'
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

# Lint first: ruff and mypy take seconds and catch what a test run would take minutes to.
test: venv lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv
	$(PY) packaging/demo.py

bench: venv
	@for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: venv typecheck
	$(VENV)/bin/ruff check telemetry daemons probes collector packaging tests bench

# A tree of links shaped like the installed package (daemons/ and probes/ inside
# telemetry/), for the tools that import it from the sources: mypy, which cannot follow
# setuptools' package-dir mapping, and the install tooling.  Rebuilt on every use.
IMPORT_TREE := build/importtree
import-tree:
	@rm -rf $(IMPORT_TREE) && mkdir -p $(IMPORT_TREE)/telemetry
	@for f in telemetry/*.py; do ln -s ../../../$$f $(IMPORT_TREE)/telemetry/; done
	@ln -s ../../../daemons $(IMPORT_TREE)/telemetry/daemons
	@ln -s ../../../probes $(IMPORT_TREE)/telemetry/probes

typecheck: venv import-tree
	MYPYPATH=$(IMPORT_TREE):collector:packaging $(VENV)/bin/mypy \
		-p telemetry -p telemetry_collector -p telemetry_install

# Installs into $(DESTDIR)$(PREFIX) as a distribution package would (packaging/telemetry_install/),
# offline and without apt: the wheel is built by the setuptools and wheel of INSTALL_TOOL_PYTHON
# (.venv's if there is one, else INSTALL_PYTHON), which also imports the programs for their man
# pages and completions, so it needs their dependencies (Debian: python3-setuptools
# python3-wheel python3-click python3-psutil python3-pycurl
# python3-pyelftools python3-systemd); a missing one is named in one line.  The programs run
# with INSTALL_PYTHON (their #! line); the package goes where that interpreter looks below
# PREFIX, or to PYTHONDIR.  After a real install (no DESTDIR): systemd-sysusers;
# systemd-tmpfiles --create; sysctl --system; systemctl daemon-reload.
SYSCONFDIR ?= /etc
LOCALSTATEDIR ?= /var
RUNDIR ?= /run
UNITDIR ?=
ZSHCOMPDIR ?=
INSTALL_PYTHON ?= /usr/bin/python3
INSTALL_TOOL_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(INSTALL_PYTHON))
PYTHONDIR ?=
# -P: the tree of links, not the telemetry/ folder of the current directory.
INSTALL_TOOL = PYTHONPATH=$(IMPORT_TREE):collector:packaging $(INSTALL_TOOL_PYTHON) -P -m telemetry_install
INSTALL_ARGS = --destdir "$(DESTDIR)" --prefix "$(PREFIX)" --sysconfdir "$(SYSCONFDIR)" \
	--localstatedir "$(LOCALSTATEDIR)" --rundir "$(RUNDIR)" --python "$(INSTALL_PYTHON)" \
	$(if $(UNITDIR),--unitdir "$(UNITDIR)") $(if $(ZSHCOMPDIR),--zshcompdir "$(ZSHCOMPDIR)") \
	$(if $(PYTHONDIR),--pythondir "$(PYTHONDIR)")

install: import-tree
	$(INSTALL_TOOL) install --component client $(INSTALL_ARGS)

# The reference collector, its own distribution (collector/); it needs the client's library.
install-collector: import-tree
	$(INSTALL_TOOL) install --component collector $(INSTALL_ARGS)

uninstall: import-tree
	$(INSTALL_TOOL) uninstall --component client --destdir "$(DESTDIR)" --prefix "$(PREFIX)"

uninstall-collector: import-tree
	$(INSTALL_TOOL) uninstall --component collector --destdir "$(DESTDIR)" --prefix "$(PREFIX)"

# The Debian packages, built by dpkg-buildpackage from a copy of the tree (debian/ at the
# root; `dpkg-buildpackage -us -uc -b` there works too) and checked by lintian; as root,
# what debian/control's Build-Depends names is installed first (apt-get build-dep).
DEB_DIR ?= dist
deb: deb-deps
	packaging/build-deb "$(DEB_DIR)"

deb-deps:
	@if ! command -v dpkg-checkbuilddeps >/dev/null || ! dpkg-checkbuilddeps >/dev/null 2>&1 \
			|| ! command -v lintian >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing the build dependencies of debian/control"; \
			export DEBIAN_FRONTEND=noninteractive; \
			{ apt-get install -y -q dpkg-dev lintian >/dev/null && apt-get build-dep -y -q ./ >/dev/null; } || \
			{ apt-get update -q >/dev/null && apt-get install -y -q dpkg-dev lintian >/dev/null && \
			  apt-get build-dep -y -q ./ >/dev/null; }; \
		else \
			echo "missing build dependencies: see 'dpkg-checkbuilddeps' (run 'make deb' as root to install them)" >&2; \
			exit 1; \
		fi; \
	fi

# The suite under a real systemd (tests/systemd/): the .debs it builds with `make deb`,
# installed in a Debian 12 container booted with systemd-nspawn.  It is skipped, with the
# reason, where that cannot be done (not root, no systemd-nspawn or mmdebstrap, no Debian
# mirror, build dependencies that cannot be installed).
SYSTEMD_TEST_PACKAGES := systemd-container mmdebstrap
test-systemd: venv
	@missing=""; for p in $(SYSTEMD_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null || \
		{ apt-get update -q >/dev/null && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; } || \
		echo "could not install$$missing; the suite says what is missing" >&2; \
	fi
	$(PY) -m pytest tests/systemd --systemd $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info collector/*.egg-info .pytest_cache
