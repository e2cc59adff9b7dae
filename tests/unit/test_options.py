"""The command-line table (telemetry.options): what its own reader makes of a command line
is what click makes of it, for every program that reads its usual lines without click."""

from __future__ import annotations

from typing import Any

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.cli import ConfigFile
from telemetry.command import build_command
from telemetry.daemons.postd import main as postd_main
from telemetry.daemons.probd import main as probd_main
from telemetry.options import Option, Options, flag, value
from telemetry.probes import hprobe, telem_record_gen

TABLES = {
    "hprobe": hprobe.OPTIONS,
    "telem-record-gen": telem_record_gen.OPTIONS,
    "telemprobd": probd_main.OPTIONS,
    "telempostd": postd_main.OPTIONS,
}


@pytest.fixture(scope="module")
def conf(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("conf") / "telemetrics.conf"
    path.write_text("[settings]\n")
    return str(path)


def by_click(name: str, options: Options, args: list[str]) -> dict[str, Any] | None:
    """The values click gives the program for `args`; None when click refuses them."""

    def capture(**values: Any) -> dict[str, Any]:
        return values

    command = build_command(name, options, capture, cls=click.Command)
    try:
        return command.main(args, prog_name=name, standalone_mode=False)
    except click.ClickException:
        return None


def options_of(options: Options) -> list[Option]:
    return [item for item in options.items if isinstance(item, Option)]


def values_for(conf: str) -> st.SearchStrategy[str]:
    """Option values, among them ones that look like options, and config paths click refuses."""
    return st.one_of(st.sampled_from([conf, "relative.conf", "/no/such/file", "-H", "--user", "-", "",
                                      "org.example/a/b", "0x10", "=x"]),
                     st.text(st.characters(blacklist_characters="\x00"), max_size=6))


def well_formed(options: Options, conf: str) -> st.SearchStrategy[list[str]]:
    """Command lines made of the table's own options, each written one of the ways click reads,
    with a config file that exists and at most one mode."""
    names = [name for item in options.items for name in item.names]

    @st.composite
    def one(draw) -> list[str]:
        name = draw(st.sampled_from(names))
        item = options._by_name[name]
        if not item.takes_value:
            if len(name) == 2:  # a flag, maybe clustered with other short flags
                flags = [n[1] for n in names if len(n) == 2 and not options._by_name[n].takes_value]
                return ["-" + name[1] + "".join(draw(st.lists(st.sampled_from(flags), max_size=2)))]
            return [name]
        text = conf if isinstance(item, ConfigFile) else draw(values_for(conf))
        if len(name) == 2:
            return draw(st.sampled_from([[name, text], [name + text]])) if text else [name, text]
        return draw(st.sampled_from([[name, text], [f"{name}={text}"]]))

    both_modes = {"--user", "--system"}
    return (st.lists(one(), max_size=5).map(lambda parts: [arg for part in parts for arg in part])
            .filter(lambda args: not both_modes <= set(args)))


def anything(options: Options, conf: str) -> st.SearchStrategy[list[str]]:
    """Command lines with mistakes too: unknown options, help, version, positional words."""
    names = [name for item in options.items for name in item.names]
    junk = ["-h", "--help", "-V", "--version", "--", "-", "word", "--bogus", "-z", "-Hz", "--user=1",
            "--heartbeat=yes", "--idle-exit-after", "0.5", "--class"]
    token = st.one_of(st.sampled_from(names), st.sampled_from(junk), values_for(conf))
    return st.lists(token, max_size=6)


@pytest.mark.parametrize("name", sorted(TABLES))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_line_read_without_click_is_read_as_click_reads_it(conf, name, data):
    options = TABLES[name]
    args = data.draw(st.one_of(well_formed(options, conf), anything(options, conf)), label="args")
    ours = options.parse(args)
    if ours is not None:  # None: the line goes to click, whatever it is
        assert ours == by_click(name, options, args)


@pytest.mark.parametrize("name", sorted(TABLES))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_the_table_s_own_options_are_read_without_click(conf, name, data):
    options = TABLES[name]
    args = data.draw(well_formed(options, conf), label="args")
    ours = options.parse(args)
    assert ours is not None
    assert ours == by_click(name, options, args)


@pytest.mark.parametrize(("name", "args"), [
    ("hprobe", []),
    ("hprobe", ["-Hlu"]),
    ("hprobe", ["--user", "-b", "--bundles-dir", "/x"]),
    ("telem-record-gen", ["-c", "org.example/a/b", "-p", "hello"]),
    ("telem-record-gen", ["-corg.example/a/b", "-s2", "--payload=-x", "-on", "--system"]),
    ("telemprobd", []),
    ("telempostd", []),
])
def test_the_usual_lines_need_no_click(conf, name, args):
    assert TABLES[name].parse(args) == by_click(name, TABLES[name], args)


@pytest.mark.parametrize("args", [["-h"], ["--help"], ["-V"], ["--version"], ["--"], ["x"], ["-Hx"],
                                  ["--heartbeat=1"], ["-f"], ["--user", "--system"], ["-f", "rel"]])
def test_help_version_and_mistakes_are_left_to_click(args):
    assert hprobe.OPTIONS.parse(args) is None


def test_postd_test_option_is_click_s_alone():
    assert postd_main.OPTIONS.parse(["--idle-exit-after", "1"]) is None


def test_a_table_refuses_a_repeated_or_malformed_name():
    with pytest.raises(ValueError, match="repeated"):
        Options(flag("a", "-a"), value("b", "-a"))
    with pytest.raises(ValueError, match="neither"):
        Options(flag("a", "-ab"))
