"""The programs' entry points: each imports its program and runs it, and a Python module
the program needs but cannot find is one line naming the package to install, not a
traceback.

pyproject.toml's [project.scripts] point here (`hprobe = "telemetry.entry:hprobe"`);
`PROGRAMS` says which function each one runs (tests/unit/test_entry.py keeps the two in
step, and the install tooling reads it to find each program's command).  This module
imports nothing but the standard library, so it works when every dependency is missing.
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Mapping

EXIT_FAILURE = 1

PROGRAMS: dict[str, str] = {
    "hprobe": "telemetry.probes.hprobe:main",
    "telem-record-gen": "telemetry.probes.telem_record_gen:main",
    "klogscanner": "telemetry.probes.klogscanner:main",
    "journalprobe": "telemetry.probes.journalprobe:main",
    "pstoreprobe": "telemetry.probes.pstoreprobe:main",
    "pstoreclean": "telemetry.probes.pstoreclean:main",
    "crashprobe": "telemetry.probes.crash.main:main",
    "telemctl": "telemetry.daemons.ctl.main:main",
    "telem_journal": "telemetry.daemons.ctl.telem_journal:main",
    "telempostd": "telemetry.daemons.postd.main:main",
    "telemprobd": "telemetry.daemons.probd.main:main",
}


# A named tuple, not a dataclass: dataclasses is imported only after
# defer_unused_modules has run (see there).  debian: the Debian (and Ubuntu) package; pypi:
# the distribution on PyPI.
Dependency = collections.namedtuple("Dependency", ["debian", "pypi"])


# Top-level module → where it comes from: the client's dependencies in pyproject.toml.
DEPENDENCIES: dict[str, Dependency] = {
    "click": Dependency("python3-click", "click"),
    "elftools": Dependency("python3-pyelftools", "pyelftools"),
    "prometheus_client": Dependency("python3-prometheus-client", "prometheus-client"),
    "psutil": Dependency("python3-psutil", "psutil"),
    "pycurl": Dependency("python3-pycurl", "pycurl"),
    "systemd": Dependency("python3-systemd", "systemd-python"),
}


def install_hint(module: str, known: Mapping[str, Dependency] = DEPENDENCIES) -> str:
    """What to install for `module` (a dotted name is reduced to its top level)."""
    top = module.split(".", 1)[0]
    dep = known.get(top)
    if dep is None:
        return f"install the Python module '{top}'"
    return f"install the Debian package {dep.debian} (or: pip install {dep.pypi})"


def missing_module_message(error: ModuleNotFoundError, known: Mapping[str, Dependency] = DEPENDENCIES) -> str | None:
    """The line for a dependency that is not installed; None for any other missing module
    (one of ours: a broken installation, whose traceback says more)."""
    name = error.name or ""
    if name.split(".", 1)[0] not in known:
        return None
    return f"the Python module '{name}' is missing: {install_hint(name, known)}"


def require(*modules: str) -> None:
    """Fail now, as a missing import would, if a module needed later (and imported only then)
    is not installed: a daemon should not find out at its first piece of work."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def run(program: str, target: str, known: Mapping[str, Dependency] = DEPENDENCIES) -> object:
    """Import `target` ("module:function") and call it; a missing dependency, found at import
    or later (some modules are imported when first needed), exits 1 with one line."""
    module, _, attr = target.partition(":")
    defer_unused_modules()
    try:
        return getattr(importlib.import_module(module), attr)()
    except ModuleNotFoundError as e:
        message = missing_module_message(e, known)
        if message is None:
            raise
        print(f"{program}: {message}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)


# Standard-library modules that another standard-library module imports on our programs'
# paths without using them there.  dataclasses imports inspect (with ast, dis and
# opcode: 1 MiB of each program's memory, a sixth of an idle daemon's own) for one call, made
# only for a class without a docstring (its __doc__ is then made from the signature).
DEFERRED_MODULES = ("inspect",)


class DeferredModule(types.ModuleType):
    """Stands in for a module until its first attribute is asked for; then the real module
    is imported, takes its place in sys.modules and answers from then on (for whoever holds
    this stand-in too), so nothing but the moment of the import changes.

    Not importlib.util.LazyLoader: its module loads at any attribute lookup, `__spec__`
    included, and Python 3.11's import statement looks that up on every `import inspect`
    after the first, so dataclasses' own import would load it at once."""

    def __getattr__(self, name: str) -> object:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)
        return getattr(real, name)


def defer_unused_modules(names: tuple[str, ...] = DEFERRED_MODULES) -> None:
    """Put a DeferredModule in place of each module of `names` not imported yet."""
    for name in names:
        if name not in sys.modules:
            module = DeferredModule(name)
            module.__spec__ = importlib.util.find_spec(name)  # importlib's questions answered, not loading
            sys.modules[name] = module


def _entry_point(program: str) -> Callable[[], object]:
    def main() -> object:
        return run(program, PROGRAMS[program])

    main.__name__ = main.__qualname__ = function_name(program)
    main.__doc__ = f"The {program} program."
    return main


def function_name(program: str) -> str:
    return program.replace("-", "_")


for _program in PROGRAMS:
    globals()[function_name(_program)] = _entry_point(_program)
