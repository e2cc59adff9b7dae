"""The default telemetrics.conf is KEYS: every key, at its default, commented out."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import INSTALL_TOOL_ENV

from telemetry import config
from telemetry.paths import Paths
from telemetry_install.defaultconf import escape_value, render
from telemetry_install.layout import Layout

LAYOUTS = [Layout(), Layout(prefix="/opt/tm", sysconfdir="/opt/etc", localstatedir="/srv", rundir="/run2")]
_KEY_LINE = re.compile(r"^#([a-z_]+)=(.*)$")


def uncommented(text: str) -> str:
    return "\n".join(line[1:] if _KEY_LINE.match(line) else line for line in text.splitlines())


@given(st.text(st.characters(blacklist_characters="\n\r\t", blacklist_categories=("Cs",)), max_size=60))
def test_escaped_values_read_back_unchanged(value):
    sections = config.parse_ini(f"[settings]\nkey = {escape_value(value)}\n")
    assert sections["settings"]["key"].value == value


def test_a_value_with_a_newline_cannot_be_written():
    with pytest.raises(ValueError, match="newline"):
        escape_value("a\nb")


@pytest.mark.parametrize("layout", LAYOUTS, ids=["usr", "opt"])
def test_nothing_is_active_and_every_key_is_there_once(layout, user_install):
    text = render(layout.paths)
    active = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert active == [f"[{config.SECTION}]"]
    names = [m.group(1) for line in text.splitlines() if (m := _KEY_LINE.match(line))]
    assert names == [k.name for k in config.KEYS]
    assert all(len(line) <= 80 for line in text.splitlines() if not _KEY_LINE.match(line))


@pytest.mark.parametrize("layout", LAYOUTS, ids=["usr", "opt"])
def test_uncommented_it_is_exactly_the_built_in_defaults(layout, user_install):
    paths: Paths = layout.paths
    cfg = config.config_from_text(uncommented(render(paths)), paths, "defaults")
    expected = config.defaults(paths)
    for key in config.KEYS:
        assert getattr(cfg, key.name) == getattr(expected, key.name), key.name


def test_the_file_names_the_locations_of_its_layout(user_install):
    paths = LAYOUTS[1].paths
    text = render(paths)
    assert paths.defaults_file in text and paths.config_file in text
    assert f"#socket_path={paths.socket_path}" in text.splitlines()
    assert f"#spool_dir={paths.spool_dir}" in text.splitlines()


def test_tidheader_is_written_as_the_original_writes_it(user_install):
    assert f"#tidheader=X-Telemetry-TID:\\s{config.DEFAULT_TID}" in render(Paths.system()).splitlines()


def test_the_printed_default_conf_is_the_installed_one(user_install):
    done = user_install.run("telemetry_install", "conf", "--prefix", "/opt/tm", "--localstatedir", "/srv", env=INSTALL_TOOL_ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == render(Layout(prefix="/opt/tm", localstatedir="/srv").paths)
