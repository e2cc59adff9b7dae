"""Reserved classifications (probd/reserved.py) and the delivery state telemctl reads
(store/delivery.py): pure rules and hostile files."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry.config import ConfigError
from telemetry.daemons.probd.reserved import NO_RESERVATION, build
from telemetry.daemons.store.delivery import DeliveryState, LastError, Pause, decode

R = build("org.clearlinux/crash, org.clearlinux/kernel/*  Org.Example/Fleet/", "0, 1000", own_uid=999)


@pytest.mark.parametrize("classification, uid, refused", [
    ("org.clearlinux/crash/clr", 1001, True),
    ("org.clearlinux/kernel/bug", 1001, True),
    ("ORG.CLEARLINUX/KERNEL/bug", 1001, True),
    ("org.example/fleet/ping", 1001, True),
    ("org.clearlinux/crash", 1001, True),
    ("org.clearlinux/crashy/x", 1001, False),
    ("org.clearlinux/hello/world", 1001, False),
    ("org.clearlinux/crash/clr", 0, False),
    ("org.clearlinux/crash/clr", 1000, False),
    ("org.clearlinux/crash/clr", 999, False),  # the account telemprobd runs as
])
def test_who_may_send_what(classification, uid, refused):
    why = R.refusal(classification, uid)
    assert (why is not None) == refused
    if refused:
        assert classification in why and f"uid {uid} may not send it" in why


def test_nothing_reserved():
    assert NO_RESERVATION.refusal("org.clearlinux/crash/clr", 1234) is None
    assert build("", "0", own_uid=5).refusal("org.clearlinux/crash/clr", 1234) is None


@pytest.mark.parametrize("prefixes, uids, key", [
    ("crash", "0", "reserved_classifications"),
    ("org.clearlinux/*/x", "0", "reserved_classifications"),
    ("org.clearlinux/crash", "no-such-user-anywhere", "reserved_classification_uids"),
])
def test_bad_values_name_their_key(prefixes, uids, key):
    with pytest.raises(ConfigError) as e:
        build(prefixes, uids, source="/etc/telemetrics/telemetrics.conf")
    assert e.value.key == key and str(e.value).startswith(f"/etc/telemetrics/telemetrics.conf: {key}: ")


def test_delivery_state_round_trip():
    state = DeliveryState(12, 1000.5, 990.0, LastError(995.0, "HTTP 503: busy", 503), Pause.BACKOFF, 1100.0, 1025.0)
    assert decode(state.encode()) == state
    assert decode(DeliveryState(1, 2.0).encode()) == DeliveryState(1, 2.0)


@given(st.binary(max_size=300))
def test_a_damaged_delivery_state_is_none_or_a_state(data):
    got = decode(data)
    assert got is None or isinstance(got, DeliveryState)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=6), max_leaves=20))
def test_any_json_decodes_without_raising(doc):
    import json

    got = decode(json.dumps({"v": 1, "pid": 3, "written_at": 5.0, "last_error": doc, "paused": doc,
                             "last_success": doc, "paused_until": doc}).encode())
    assert got is not None and got.pid == 3
