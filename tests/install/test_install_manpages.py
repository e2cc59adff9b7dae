"""Man pages generated from the click definitions and KEYS, rendered with man -l."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import INSTALL_TOOL_ENV

from telemetry import config
from telemetry_install import helptext, manpages, roff
from telemetry_install.layout import Layout
from telemetry_install.programs import (
    Program,
    ProgramError,
    load_command,
    parse_scripts,
    read_programs,
    resolve,
)

TREE = Path(__file__).resolve().parents[2]
MAN_ENV = {"MANWIDTH": "100", "LC_ALL": "C.UTF-8", "MANPAGER": "cat", "PAGER": "cat"}


def unescape(s: str) -> str:
    s = re.sub(r"\\\[u([0-9A-F]{4,6})\]", lambda m: chr(int(m.group(1), 16)), s)
    return s.replace("\\&", "").replace("\\-", "-").replace("\\e", "\\")


def normalized(s: str) -> str:
    return "".join(" " if c == "\t" else c for c in s if c in "\n\t" or (ord(c) >= 0x20 and ord(c) != 0x7F))


def render(page_text: str, tmp_path: Path, name: str = "page.1") -> str:
    """The page as man shows it; groff warnings (-ww) fail the test."""
    if not (shutil.which("man") and shutil.which("groff")):
        pytest.skip("man and groff are not installed (Debian packages man-db, groff-base)")
    path = tmp_path / name
    path.write_text(page_text)
    env = {**os.environ, **MAN_ENV}
    lint = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert lint.returncode == 0 and lint.stderr == "", lint.stderr
    shown = subprocess.run(["man", "-l", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    return re.sub(r".\x08", "", shown.stdout)


def flat(text: str) -> str:
    """Rendered text with hyphenation and line breaks undone, for searching."""
    return " ".join(re.sub(r"\u2010\n\s*", "", text).split())


# --- roff escaping: the pure core --------------------------------------------------------

@given(st.text(max_size=200))
def test_text_never_starts_a_request_and_reads_back(s):
    out = roff.text(s)
    assert out.isascii()
    for line in out.split("\n"):
        assert not line.startswith((".", "'"))
    assert unescape(out) == normalized(s)


@given(st.text(max_size=80))
def test_macro_arguments_stay_one_quoted_argument(s):
    arg = roff.quoted(s)
    assert arg.startswith('"') and arg.endswith('"') and '"' not in arg[1:-1]
    assert "\n" not in arg


def test_options_are_bold_and_metavars_italic():
    assert roff.options("-f, --config_file PATH") == "\\fB\\-f\\fR, \\fB\\-\\-config_file\\fR \\fIPATH\\fR"
    assert roff.options("--x / --no-x") == "\\fB\\-\\-x\\fR / \\fB\\-\\-no\\-x\\fR"


# --- reading a fixed help text -----------------------------------------------------------

ORIGINAL_USAGE = """\
%s: Usage
  -f,  --config_file    Configuration file. This overides the other parameters
  -h,  --help           Display this help message
  -V,  --version        Print the program version
"""

GLIB_USAGE = """\
Usage:
  telem-record-gen [OPTIONS] - create and send a custom telemetry record

Help Options:
  -h, --help            Show help options

Application Options:
  -s, --severity        Severity level (1-4) - (default 1)
  -D, --directory DIR   Read the journal files in DIR
                        instead of the local journal
      --once            Stop after the entries already in the journal

Unlike the original, the position is saved.
"""


def test_help_text_of_the_original_daemons():
    parsed = helptext.parse(ORIGINAL_USAGE.replace("%s", "telemprobd"))
    assert parsed.options["--config_file"] == parsed.options["-f"] == (
        "Configuration file. This overides the other parameters")
    assert parsed.options["-V"] == "Print the program version"
    assert parsed.summary == "" and parsed.paragraphs == ()


def test_help_text_in_glib_style():
    parsed = helptext.parse(GLIB_USAGE)
    assert parsed.summary == "create and send a custom telemetry record"
    assert parsed.options["--severity"] == "Severity level (1-4) - (default 1)"
    assert parsed.options["-D"] == "Read the journal files in DIR instead of the local journal"
    assert parsed.options["--once"] == "Stop after the entries already in the journal"
    assert parsed.paragraphs == ("Unlike the original, the position is saved.",)


flags = st.from_regex(r"--[a-z][a-z_-]{1,15}", fullmatch=True)
descriptions = st.from_regex(r"[A-Z][a-z ()0-9]{0,40}[a-z)]", fullmatch=True)


@given(st.dictionaries(flags, descriptions, min_size=1, max_size=8))
def test_every_option_line_is_read_back(table):
    width = max(map(len, table)) + 2
    text = "Application Options:\n" + "".join(f"      {f:<{width}}{d}\n" for f, d in table.items())
    assert helptext.parse(text).options == table


# --- pages of a command ------------------------------------------------------------------

@click.group(epilog="""
\b
Environment:
  DEMO_X   what it does
\b
Exit status:
  0  fine
  2  usage
""")
@click.option("-f", "--config_file", metavar="PATH", help="A file. Lines starting .like this stay text.")
@click.option("--secret", hidden=True)
def demo(config_file, secret):
    """Do demo things.

    A longer description with a backslash \\ and 'quotes'.

    \b
    keep   this
    layout as is
    """


@demo.command("run")
@click.option("-n", "--count", type=int, default=3, show_default=True, help="How many.")
@click.argument("target")
def demo_run(count, target):
    """Run the demo against TARGET."""


def test_a_group_page_has_everything_click_knows(tmp_path, user_install):
    page = manpages.program_page(Program("demo", __name__, "demo"), demo, Layout().paths, [("other", 1)])
    assert page.filename == "demo.1"
    shown = render(page.text, tmp_path)
    text = flat(shown)
    for expected in ("demo - Do demo things", "-f, --config_file PATH",
                     "Lines starting .like this stay text.", "backslash \\ and 'quotes'",
                     "demo run [OPTIONS] TARGET", "-n, --count INTEGER", "How many. [default: 3]",
                     "DEMO_X what it does", "other(1)", "telemetrics.conf(5)"):
        assert expected in text, expected
    assert "keep   this\n" in shown, "a \\b paragraph keeps its layout"
    assert "--secret" not in text
    sections = re.findall(r"^([A-Z][A-Z ]+)$", shown, re.MULTILINE)
    assert sections[:4] == ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS"]
    assert {"COMMANDS", "ENVIRONMENT", "EXIT STATUS", "FILES", "SEE ALSO"} <= set(sections)
    assert sections.count("ENVIRONMENT") == 1, "the program's own section replaces the generic one"


def test_options_without_help_take_the_printed_help(tmp_path, user_install):
    class Fixed(click.Command):
        def get_help(self, ctx):
            return ORIGINAL_USAGE.replace("%s", ctx.info_name)

    @click.command("fixed", cls=Fixed)
    @click.option("-f", "--config_file")
    def fixed(config_file):
        pass

    text = flat(render(manpages.program_page(Program("fixed", __name__, "x"), fixed, Layout().paths).text, tmp_path))
    assert "-f, --config_file TEXT Configuration file. This overides the other parameters" in text


# --- the programs of pyproject.toml ------------------------------------------------------

def existing_programs() -> list[tuple[Program, click.Command]]:
    return resolve(read_programs(TREE / "pyproject.toml"))[0]


def test_scripts_table_is_read_in_order_and_checked():
    programs = parse_scripts('[project.scripts]\nb = "m.b:main"\na = "m.a:cli"\n')
    assert programs == [Program("a", "m.a", "cli"), Program("b", "m.b", "main")]
    with pytest.raises(ProgramError, match="module:function"):
        parse_scripts('[project.scripts]\nbad = "nocolon"\n')
    with pytest.raises(ProgramError, match="pyproject.toml"):
        parse_scripts("[project\n")


def test_a_missing_module_is_skipped_but_a_broken_one_is_an_error(user_install):
    assert load_command(Program("nope", "telemetry.no_such_module", "main")) is None
    assert load_command(Program("nope", "telemetry.probes.no_such.deeper", "main")) is None
    with pytest.raises(ProgramError, match="has no 'nothing'"):
        load_command(Program("cfg", "telemetry.config", "nothing"))
    with pytest.raises(ProgramError, match="not a click command"):
        load_command(Program("cfg", "telemetry.config", "load"))


def test_every_existing_program_gets_a_page_that_renders(tmp_path, user_install):
    found = existing_programs()
    if not found:
        pytest.skip("no program of [project.scripts] exists yet")
    layout = Layout()
    for program, command in found:
        page = manpages.program_page(program, command, layout.paths, [(p.name, 1) for p, _ in found])
        text = flat(render(page.text, tmp_path, page.filename))
        assert f"{program.name} - " in text
        assert "telemetrics.conf(5)" in text
        ctx = click.Context(command, info_name=program.name, **command.context_settings)
        for param in command.get_params(ctx):
            if isinstance(param, click.Option) and not param.hidden:
                assert max(param.opts, key=len) in text, (program.name, param.opts)
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                if not command.get_command(ctx, name).hidden:
                    assert f"{program.name} {name}" in text


@pytest.mark.parametrize("pyproject", ["pyproject.toml", "collector/pyproject.toml"])
def test_every_page_has_the_sections_a_reader_expects(pyproject, tmp_path, user_install):
    """NAME, SYNOPSIS, DESCRIPTION, OPTIONS, FILES, EXIT STATUS, EXAMPLES, SEE ALSO: the
    program's own epilog gives EXIT STATUS and EXAMPLES, so a new program without them fails
    here.  The collector's page stands alone (no telemetrics.conf keys, its own files)."""
    found = resolve(read_programs(TREE / pyproject))[0]
    client = pyproject == "pyproject.toml"
    for program, command in found:
        page = manpages.program_page(program, command, Layout().paths, [("telemctl", 1)], client=client)
        titles = manpages.section_titles(page)
        assert [t for t in manpages.REQUIRED_SECTIONS if t not in titles] == [], program.name
        assert titles.index("EXIT STATUS") < titles.index("EXAMPLES") < titles.index("SEE ALSO")
        assert ("CONFIGURATION" in titles) == client
        render(page.text, tmp_path, page.filename)


def test_the_conf_page_lists_every_key(tmp_path, user_install):
    paths = Layout(prefix="/opt/tm").paths
    text = flat(render(manpages.config_page(paths, ["telemprobd"]).text, tmp_path, "telemetrics.conf.5"))
    for key in config.KEYS:
        assert f"{key.name} = {key.kind.value}" in text
        assert key.range_text() in text
    assert paths.defaults_file in text and "telemprobd(1)" in text
    for key in config.KEYS:
        if not key.original:
            assert key.name in text.split("COMPATIBILITY", 1)[1]


# --- the command line --------------------------------------------------------------------

def test_man_prints_a_page(user_install):
    done = user_install.run("telemetry_install", "man", "telemetrics.conf", env=INSTALL_TOOL_ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b'.\\" Generated')


@pytest.mark.parametrize(("args", "message"), [
    (("man", "no-such-page"), "no man page 'no-such-page'; there are: "),
    (("conf", "--prefix", "usr"), "prefix must be an absolute path"),
    (("install", "--no-package", "--destdir", "x", "--rundir", "/a b"), "rundir must be an absolute path"),
    (("--source", "/nonexistent", "man", "telemprobd"), "cannot find the source tree"),
    (("install", "--destdir", "/nonexistent/d", "--python", "/nonexistent/python3"),
     "cannot run /nonexistent/python3"),
])
def test_bad_input_is_one_line_and_exit_1(args, message, user_install):
    done = user_install.run("telemetry_install", *args, env=INSTALL_TOOL_ENV)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
