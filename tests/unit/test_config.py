"""telemetrics.conf: the dialect, every key's default, range and error, and the lookup order."""

from __future__ import annotations

import ipaddress
import os
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry.config import (
    INT64_MAX,
    KEYS,
    ConfigError,
    Kind,
    NoticeKind,
    OutOfRange,
    config_from_text,
    defaults,
    load,
    parse_ini,
    plaintext_warning,
    tid_header,
)
from telemetry.paths import Paths

SYSTEM = Paths.system()


def conf(body: str):
    return config_from_text("[settings]\n" + body, SYSTEM, "/t.conf")


# --- defaults: the original's, key by key ------------------------------------------------

ORIGINAL_DEFAULTS = {
    "server": "https://clr.telemetry.intel.com/v2/collector",
    "socket_path": "/run/telem-0",
    "spool_dir": "/var/spool/telemetry",
    "cainfo": "",
    "tidheader": "X-Telemetry-TID: 6907c830-eed9-4ce9-81ae-76daf8d88f0f",
    "rate_limit_strategy": "spool",
    "record_expiry": 1200,
    "spool_max_size": 5120,
    "spool_process_time": 120,
    "record_window_length": 15,
    "byte_window_length": 20,
    "record_burst_limit": 1000,
    "byte_burst_limit": -1,
    "rate_limit_enabled": True,
    "daemon_recycling_enabled": True,
    "record_retention_enabled": False,
    "record_server_delivery_enabled": True,
}


def test_every_original_key_has_the_original_default():
    cfg = defaults(SYSTEM)
    for name, value in ORIGINAL_DEFAULTS.items():
        assert getattr(cfg, name) == value, name
    assert {k.name for k in KEYS if k.original} == set(ORIGINAL_DEFAULTS)


def test_user_mode_path_defaults_follow_the_paths(user_install):
    cfg = defaults(user_install.paths)
    assert cfg.socket_path == user_install.paths.socket_path
    assert cfg.spool_dir == user_install.paths.spool_dir
    assert cfg.socket_path.startswith(str(user_install.root))


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.name)
def test_every_key_default_is_in_range_and_round_trips(key):
    value = key.default_for(SYSTEM)
    text = str(value).lower() if key.kind is Kind.BOOL else str(value).replace(" ", "\\s")
    assert getattr(conf(f"{key.name}={text}"), key.name) == value


INT_KEYS = [k for k in KEYS if k.kind is Kind.INT]


@pytest.mark.parametrize("key", INT_KEYS, ids=lambda k: k.name)
def test_every_integer_key_range(key):
    assert getattr(conf(f"{key.name}={key.lo}"), key.name) == key.lo
    assert getattr(conf(f"{key.name}={key.hi}"), key.name) == key.hi
    with pytest.raises(ConfigError, match=f"/t.conf:2: {key.name}: 'abc' is not an integer"):
        conf(f"{key.name}=abc")
    with pytest.raises(ConfigError, match="not an integer"):
        conf(f"{key.name}=12abc")  # the original silently read 12
    with pytest.raises(ConfigError, match="overflows"):
        conf(f"{key.name}={2**64}")
    below, above = key.lo - 1, key.hi + 1
    mode = key.out_of_range
    if mode is OutOfRange.REJECT:
        for v in (below, above):
            if abs(v) <= INT64_MAX:
                with pytest.raises(ConfigError, match=rf"{v} is out of range; accepted: "):
                    conf(f"{key.name}={v}")
    elif mode is OutOfRange.CLAMP:
        assert getattr(conf(f"{key.name}={below}"), key.name) == key.lo
        assert getattr(conf(f"{key.name}={above}"), key.name) == key.hi
    elif mode is OutOfRange.CLAMP_HIGH:
        with pytest.raises(ConfigError, match="out of range"):
            conf(f"{key.name}={below}")
        if above <= INT64_MAX:
            assert getattr(conf(f"{key.name}={above}"), key.name) == key.hi
    elif mode is OutOfRange.NEGATIVE_DISABLES:
        assert getattr(conf(f"{key.name}=-1"), key.name) == -1
        assert getattr(conf(f"{key.name}=-77"), key.name) == -1
        if above <= INT64_MAX:
            assert getattr(conf(f"{key.name}={above}"), key.name) == key.hi


def test_original_clamps():
    assert conf("spool_process_time=5").spool_process_time == 120
    assert conf("spool_process_time=1000").spool_process_time == 300
    assert conf("spool_max_size=-20").spool_max_size == -1
    assert conf(f"spool_max_size={INT64_MAX}").spool_max_size == INT64_MAX // 1024
    assert conf(f"record_expiry={INT64_MAX}").record_expiry == INT64_MAX // 60
    assert conf("record_burst_limit=-3").record_burst_limit == -1
    assert conf("record_window_length=  +7").record_window_length == 7
    with pytest.raises(ConfigError, match="record_window_length: 60 is out of range; accepted: 0..59 minutes"):
        conf("record_window_length=60")
    with pytest.raises(ConfigError, match="record_expiry: -1 is out of range"):
        conf("record_expiry=-1")


BOOL_KEYS = [k for k in KEYS if k.kind is Kind.BOOL]


@pytest.mark.parametrize("key", BOOL_KEYS, ids=lambda k: k.name)
def test_every_boolean_key(key):
    for text, value in (("true", True), ("TRUE", True), ("1", True), ("False", False), ("0", False)):
        assert getattr(conf(f"{key.name}={text}"), key.name) is value
    for bad in ("yes", "", "2", "truee"):
        with pytest.raises(ConfigError, match=f"{key.name}: .* is not a boolean; accepted: true or false"):
            conf(f"{key.name}={bad}")


CHOICE_KEYS = [k for k in KEYS if k.kind is Kind.CHOICE]


@pytest.mark.parametrize("key", CHOICE_KEYS, ids=lambda k: k.name)
def test_every_choice_key(key):
    for choice in key.choices:
        assert getattr(conf(f"{key.name}={choice.upper()}"), key.name) == choice
    with pytest.raises(ConfigError, match=f"{key.name}: 'bogus' is not a known value; accepted: one of"):
        conf(f"{key.name}=bogus")


STRING_KEYS = [k for k in KEYS if k.kind is Kind.STRING]


@pytest.mark.parametrize("key", STRING_KEYS, ids=lambda k: k.name)
def test_every_string_key_is_verbatim_and_empty_stays_empty(key):
    assert getattr(conf(f"{key.name}=a\\sb # not a comment"), key.name) == "a b # not a comment"
    assert getattr(conf(f"{key.name}="), key.name) == ""


# --- the dialect --------------------------------------------------------------------------

def test_dialect():
    text = "\n".join(
        [
            "# comment",
            "; also a comment",
            "  [settings]  ",
            "\tserver = http://a \t",
            "server=http://b",
            "[other]",
            "anything=goes",
            "[settings]",
            "cainfo=c\\\\d\\",
            "tidheader=X-T:\\s1",
        ]
    )
    sections = parse_ini(text)
    assert sections["settings"]["server"].value == "http://b"
    assert sections["settings"]["server"].line == 5
    assert sections["settings"]["cainfo"].value == "c\\d"
    assert sections["settings"]["tidheader"].value == "X-T: 1"
    assert sections["other"]["anything"].value == "goes"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[settings\nserver=x", "t.conf:1: Expected closing ']' for section"),
        ("[settings]\n=x", "t.conf:2: Encountered empty key"),
        ("[settings]\nnovalue", "t.conf:2: Expected key=value notation"),
        ("server=x", "t.conf:1: server: Encountered key=value mapping without a valid section"),
    ],
)
def test_dialect_errors_name_file_and_line(text, message):
    with pytest.raises(ConfigError) as e:
        config_from_text(text, SYSTEM, "/x/t.conf")
    assert message in str(e.value)


def test_what_is_ignored_is_said_with_file_and_line():
    """Unknown keys and sections are ignored as the original (and systemd) ignore them, a
    repeated key takes its last value as in the original, an out-of-range value is moved
    into range: each is a notice naming the file and the line(s), and loading goes on."""
    text = ("[settings]\nsevrer=http://typo\nrecord_expiry=10\n[setings]\nserver=http://a\nport=1\n"
            "[settings]\nrecord_expiry=20\nspool_process_time=5\n")
    cfg = config_from_text(text, SYSTEM, "/x/t.conf")
    assert cfg.server == ORIGINAL_DEFAULTS["server"] and cfg.record_expiry == 20
    assert cfg.spool_process_time == 120
    assert [(n.kind, str(n)) for n in cfg.notices] == [
        (NoticeKind.UNKNOWN_KEY, "/x/t.conf:2: sevrer: unknown key, ignored (telemetrics.conf(5) lists the keys)"),
        (NoticeKind.UNKNOWN_SECTION, "/x/t.conf:4: unknown section [setings] ignored: only [settings] is read; "
                                     "its settings (server) are not applied"),
        (NoticeKind.DUPLICATE_KEY, "/x/t.conf:8: record_expiry: also set at line 3; the last value, this line's, "
                                   "is used"),
        (NoticeKind.CLAMPED, "/x/t.conf:9: spool_process_time=5 is out of range (120..300 seconds); 120 is used"),
    ]
    assert config_from_text("[settings]\nserver=http://a\n", SYSTEM).notices == ()


@pytest.mark.parametrize(("server", "warned"), [
    ("http://collector.example.com/v2/collector", True),
    ("http://10.0.0.5:8080/", True),
    ("HTTP://[2001:db8::1]/", True),
    ("https://collector.example.com/", False),
    ("http://127.0.0.1:8080/v2/collector", False),
    ("http://127.1.2.3/", False),
    ("http://[::1]:8080/", False),
    ("http://localhost/", False),
    ("http://a.localhost/", False),
])
def test_plaintext_to_another_machine_is_one_warning(server, warned):
    warning = plaintext_warning(conf(f"server={server}"))
    assert (warning is not None) == warned
    if warned:
        assert "unencrypted" in warning and "\n" not in warning


def stdlib_plaintext_host(server: str) -> str | None:
    """What the warning is about by urllib.parse and ipaddress themselves: the host, or None
    for no warning."""
    try:
        host = urllib.parse.urlsplit(server).hostname or ""
    except ValueError:
        return None
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return host


OCTET = st.one_of(st.integers(0, 300).map(str), st.text("0123456789", min_size=0, max_size=4))
IPV4ISH = st.lists(OCTET, min_size=3, max_size=5).map(".".join)
HOSTS = st.one_of(
    IPV4ISH,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=4, network="127.0.0.0/8").map(str),
    st.sampled_from(["localhost", "LOCALHOST", "a.localhost", "b.LocalHost", "localhost.a", "Collector.Example"]),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.ip_addresses(v=6).map(lambda a: f"[{a.exploded}]"),
    st.sampled_from(["[::1]", "[0::1]", "[::1%25lo]", "[::ffff:127.0.0.1]", "[v1.x]", "[127.0.0.1]", "[::1", "::1]"]),
    st.text("0123456789abcdefxyzLOC.:%@[]-_~", max_size=24),
    st.text(max_size=8),
)


@given(scheme=st.sampled_from(["http://", "HTTP://", "hTtP://"]),
       userinfo=st.sampled_from(["", "user@", "user:secret@", "a@b@"]),
       host=HOSTS,
       port=st.sampled_from(["", ":80", ":8080", ":", ":x"]),
       rest=st.sampled_from(["", "/", "/v2/collector", "?q=1", "#f", "/a@b:c"]))
def test_the_plaintext_warning_reads_hosts_as_urllib_and_ipaddress_do(scheme, userinfo, host, port, rest):
    """telempostd reads the usual URLs without importing urllib.parse and ipaddress (half
    a MiB of the idle daemon); whatever the URL, the warning is theirs."""
    cfg = conf(f"server={scheme}{userinfo}{host}{port}{rest}".replace("\n", ""))
    server = cfg.server  # as the file's reader left it (stripped, unescaped)
    warning = plaintext_warning(cfg)
    expected = stdlib_plaintext_host(server)
    if expected is None:
        assert warning is None
    else:
        assert warning == (f"server={server}: records are sent to {expected} unencrypted (http://); "
                           "use an https:// URL for a collector on another machine")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root refuses a file other users can change")
@pytest.mark.parametrize("how", ["other-writable", "group-writable", "owned by a user", "directory"])
def test_root_refuses_a_file_other_users_can_change(tmp_path, how):
    d = tmp_path / "etc"
    d.mkdir()
    path = d / "telemetrics.conf"
    path.write_text("[settings]\n")
    if how == "other-writable":
        path.chmod(0o646)
    elif how == "group-writable":
        os.chown(path, 0, 100)
        path.chmod(0o664)
    elif how == "owned by a user":
        os.chown(path, 65534, 0)
    else:
        d.chmod(0o777)
    with pytest.raises(ConfigError, match="refused: .*only a file no other user can change is read"):
        load(SYSTEM, str(path))
    d.chmod(0o1777)  # sticky: others cannot replace root's file
    path.chmod(0o644)
    os.chown(path, 0, 0)
    assert load(SYSTEM, str(path)).source == str(path)


def test_tid_header_split():
    assert tid_header(defaults(SYSTEM)) == ("X-Telemetry-TID", "6907c830-eed9-4ce9-81ae-76daf8d88f0f")
    with pytest.raises(ConfigError, match="tidheader"):
        tid_header(conf("tidheader=novalue"))


# --- lookup order -------------------------------------------------------------------------

def test_user_mode_lookup(user_install):
    paths = user_install.paths
    assert load(paths).source is None
    user_install.write_config("server=http://user\n")
    cfg = load(paths)
    assert cfg.server == "http://user" and cfg.source == paths.config_file
    other = user_install.root / "other.conf"
    other.write_text("[settings]\nserver=http://explicit\n")
    cfg = load(paths, str(other))
    assert cfg.server == "http://explicit" and cfg.source == str(other)
    # No merging: a key missing from the chosen file takes the built-in default.
    assert cfg.spool_dir == paths.spool_dir


def test_system_mode_lookup_order(tmp_path):
    paths = Paths.system(prefix=str(tmp_path / "usr"), sysconfdir=str(tmp_path / "etc"))
    assert load(paths).source is None
    os.makedirs(os.path.dirname(paths.defaults_file))
    with open(paths.defaults_file, "w") as f:
        f.write("[settings]\nserver=http://defaults\n")
    assert load(paths).server == "http://defaults"
    os.makedirs(os.path.dirname(paths.config_file))
    with open(paths.config_file, "w") as f:
        f.write("[settings]\nrecord_expiry=5\n")
    cfg = load(paths)
    assert cfg.source == paths.config_file and cfg.record_expiry == 5
    assert cfg.server == ORIGINAL_DEFAULTS["server"]


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda d: "relative.conf", "must be absolute"),
        (lambda d: str(d / "missing.conf"), "No such file"),
        (lambda d: str(d), "not a regular file"),
    ],
)
def test_explicit_path_rules(tmp_path, make_path, message):
    with pytest.raises(ConfigError, match=message):
        load(SYSTEM, make_path(tmp_path))


def test_bad_file_contents(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"[settings]\nserver=\xff\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load(SYSTEM, str(bad))
    if os.getuid() != 0:
        unreadable = tmp_path / "unreadable.conf"
        unreadable.write_text("[settings]\n")
        unreadable.chmod(0)
        with pytest.raises(ConfigError, match="cannot read"):
            load(SYSTEM, str(unreadable))
