"""The programs' entry points: pyproject.toml's scripts and telemetry.entry agree, and a
missing dependency is one line naming the package to install, for real programs run as a
user runs them (the module made unimportable in that process only)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from telemetry import entry
from telemetry_collector import entry as collector_entry

TREE = Path(__file__).resolve().parents[2]


def scripts(pyproject: Path) -> dict[str, str]:
    return tomllib.loads(pyproject.read_text())["project"]["scripts"]


def test_every_script_runs_through_the_entry_module():
    assert scripts(TREE / "pyproject.toml") == {
        name: f"telemetry.entry:{entry.function_name(name)}" for name in entry.PROGRAMS
    }
    assert scripts(TREE / "collector" / "pyproject.toml") == {
        name: "telemetry_collector.entry:main" for name in collector_entry.PROGRAMS
    }


@pytest.mark.parametrize("target", [*entry.PROGRAMS.values(), *collector_entry.PROGRAMS.values()])
def test_every_target_exists(target):
    module, _, attr = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_the_entry_module_needs_only_the_standard_library():
    code = ("import sys\n"
            "for name in ('click', 'platformdirs', 'psutil', 'pycurl', 'elftools', 'systemd'):\n"
            "    sys.modules[name] = None\n"
            "import telemetry.entry\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("name", "expected"), [
    ("pycurl", "the Python module 'pycurl' is missing: install the Debian package python3-pycurl "
               "(or: pip install pycurl)"),
    ("elftools.dwarf", "the Python module 'elftools.dwarf' is missing: install the Debian package "
                       "python3-pyelftools (or: pip install pyelftools)"),
    ("systemd", "the Python module 'systemd' is missing: install the Debian package python3-systemd "
                "(or: pip install systemd-python)"),
])
def test_message_names_the_package(name, expected):
    assert entry.missing_module_message(ModuleNotFoundError("x", name=name)) == expected


def test_our_own_missing_modules_are_not_dependencies():
    assert entry.missing_module_message(ModuleNotFoundError("x", name="telemetry.probes")) is None
    assert entry.missing_module_message(ModuleNotFoundError("x", name=None)) is None


def without(modules: tuple[str, ...], call: str, env: dict[str, str], argv0: str) -> subprocess.CompletedProcess:
    """`call` in a Python where `modules` cannot be imported, as if they were not installed,
    with the program name in argv[0] as a console script has it."""
    code = ("import sys\n"
            f"sys.argv[0] = {argv0!r}\n"
            f"for name in {modules!r}:\n"
            "    sys.modules[name] = None\n"
            f"{call}\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize(("program", "module", "debian"), [
    ("hprobe", "click", "python3-click"),
    ("telemctl", "psutil", "python3-psutil"),
    ("telempostd", "pycurl", "python3-pycurl"),  # imported at the first delivery: checked at start
])
def test_missing_dependency_is_one_line(user_install, program, module, debian):
    r = without((module,), f"from telemetry.entry import {entry.function_name(program)} as main; main()",
                user_install.env, program)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"{program}: the Python module '{module}' is missing: install the Debian package {debian} "
        f"(or: pip install {entry.DEPENDENCIES[module].pypi})"]


def test_collector_without_the_client_library_names_its_package(user_install):
    r = without(("telemetry",), "from telemetry_collector.entry import main; main()", user_install.env,
                "telemetry-collector")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "telemetry-collector: the Python module 'telemetry' is missing: install the Debian package "
        "telemetrics-client (or: pip install telemetrics-client)"]


def test_collector_without_uvicorn_names_its_package(user_install, tmp_path):
    r = without(("uvicorn",), "from telemetry_collector.entry import main; main()",
                {**user_install.env, "TELEMETRY_COLLECTOR_DATABASE": f"sqlite:///{tmp_path}/r.db"},
                "telemetry-collector")
    assert r.returncode == 1
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("telemetry-collector: ") and line.endswith(
        "install the Debian package python3-uvicorn (or: pip install uvicorn)"), line


@pytest.mark.parametrize("program", sorted(entry.PROGRAMS))
def test_a_bad_option_names_the_program(user_install, program):
    """As its console script runs it: the one-line error starts with the program's name."""
    code = (f"import sys\nsys.argv = [{program!r}, '--no-such-option']\n"
            f"from telemetry.entry import {entry.function_name(program)} as main\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=user_install.env, timeout=60)
    assert r.returncode != 0
    [line] = r.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"{program}: "), line
