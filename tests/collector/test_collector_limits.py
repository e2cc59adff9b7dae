"""The collector's pure cores for exposure to a network: rate limiter, connection counter,
limits, credentials, certificate identity, the grouping of streamed reads."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry_collector.credentials import (
    TOKEN_PREFIX,
    CredentialError,
    Scope,
    check_name,
    new_secret,
    secret_from_authorization,
    secret_hash,
)
from telemetry_collector.identity import from_peercert
from telemetry_collector.limits import (
    Admission,
    ConnectionCounter,
    LimitError,
    Limits,
    RateLimiter,
    retry_after,
)
from telemetry_collector.query import QueryRejected, parse_query
from telemetry_collector.reading import CLOSING, next_cursor, opening, plan_groups

# --- token buckets -----------------------------------------------------------------------------


def test_bucket_allows_the_burst_then_refuses_with_the_wait():
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("m", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("m", 0.0) == pytest.approx(0.5)
    assert limiter.take("other", 0.0) == 0.0  # buckets are per key
    assert limiter.take("m", 0.5) == 0.0  # one token came back
    assert limiter.take("m", 0.5) == pytest.approx(0.5)


def test_a_refused_record_takes_nothing():
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.take("m", 0.0) == 0.0
    for t in (0.1, 0.2, 0.5):
        assert limiter.take("m", t) > 0
    assert limiter.take("m", 1.0) == 0.0


def test_off_and_bounded():
    assert RateLimiter(rate=0.0, burst=0).take("m", 0.0) == 0.0
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=3)
    for key in "abcde":
        limiter.take(key, 0.0)
    assert len(limiter) == 3


def test_retry_after_is_whole_seconds_never_zero():
    assert [retry_after(w) for w in (0.001, 0.5, 1.0, 1.01, 99.2)] == [1, 1, 1, 2, 100]


@given(rate=st.floats(0.1, 100), burst=st.integers(1, 50),
       gaps=st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=200))
def test_bucket_never_lets_more_than_burst_plus_rate_times_time(rate, burst, gaps):
    limiter = RateLimiter(rate=rate, burst=burst)
    now, accepted = 0.0, 0
    for gap in gaps:
        now += gap
        wait = limiter.take("k", now)
        if wait == 0.0:
            accepted += 1
        else:
            assert 0 < wait <= 1 / rate + 1e-9
            assert limiter.take("k", now + wait + 1e-9) == 0.0  # waiting as told is enough
            accepted += 1
            now += wait + 1e-9
    assert accepted <= burst + rate * now + 1e-6


# --- connections -----------------------------------------------------------------------------------

def test_connection_counter_caps_total_and_per_address():
    c = ConnectionCounter(total=4, per_address=2, exempt=frozenset({"proxy"}))
    assert [c.admit("a") for _ in range(3)] == [Admission.ADMITTED, Admission.ADMITTED, Admission.TOO_MANY_FROM_ADDRESS]
    assert c.admit("proxy") is Admission.ADMITTED and c.admit("proxy") is Admission.ADMITTED
    assert c.admit("proxy") is Admission.TOO_MANY and c.admit("b") is Admission.TOO_MANY
    c.release("a")
    assert c.admit("b") is Admission.ADMITTED
    c.release("nobody")  # never admitted: nothing changes
    assert c.open == 4


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcx")), max_size=300))
def test_connection_counter_matches_what_is_open(ops):
    c = ConnectionCounter(total=6, per_address=3, exempt=frozenset({"x"}))
    held: list[str] = []
    for opening_one, address in ops:
        if opening_one:
            if c.admit(address) is Admission.ADMITTED:
                held.append(address)
        elif address in held:
            held.remove(address)
            c.release(address)
        assert c.open == len(held) <= 6
        for a in "abc":
            assert c.from_address(a) == held.count(a) <= 3


def test_zero_turns_counts_off():
    c = ConnectionCounter(total=0, per_address=0)
    assert all(c.admit("a") is Admission.ADMITTED for _ in range(10_000))


@pytest.mark.parametrize(("changes", "message"), [
    ({"head_timeout": 0}, "head-timeout must be more than 0"),
    ({"idle_timeout": 4000}, "idle-timeout"),
    ({"max_header_bytes": 100}, "max-header-bytes must be at least 1024"),
    ({"max_connections": -1}, "max-connections must not be negative"),
    ({"machine_rate": float("nan")}, "machine-rate must be a number"),
    ({"address_rate": 1.0, "address_burst": 0}, "address-burst must be at least 1"),
])
def test_limits_refuse_nonsense(changes, message):
    with pytest.raises(LimitError, match=message):
        Limits(**changes)
    Limits(machine_rate=0, machine_burst=0, max_header_bytes=0)


# --- credentials -----------------------------------------------------------------------------------

def test_secrets_and_their_hashes():
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith(TOKEN_PREFIX) and len(a) == len(TOKEN_PREFIX) + 43
    assert secret_hash(a) != secret_hash(b) and len(secret_hash(a)) == 64 and a not in secret_hash(a)


def test_scopes():
    assert Scope.ADMIN.allows(Scope.READ) and Scope.ADMIN.allows(Scope.ADMIN)
    assert Scope.READ.allows(Scope.READ) and not Scope.READ.allows(Scope.ADMIN)


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(("header", "secret"), [
    ("Bearer tct_abc", "tct_abc"), ("bearer   tct_abc  ", "tct_abc"), (_basic("me:tct_abc"), "tct_abc"),
    (_basic(":tct_abc"), "tct_abc"), (_basic("me:"), None), (_basic("no-colon"), None), ("Basic !!!", None),
    ("Bearer", None), ("Digest x", None), ("", None), (None, None),
])
def test_authorization_header(header, secret):
    assert secret_from_authorization(header) == secret


@given(st.text(max_size=200))
def test_any_authorization_header_gives_a_secret_or_none(header):
    found = secret_from_authorization(header)
    assert found is None or (isinstance(found, str) and found)


def test_names():
    assert check_name("dashboard") == "dashboard" and check_name("Jane Doe") == "Jane Doe"
    for bad in ("", " x", "x ", "a\nb", "x" * 129):
        with pytest.raises(CredentialError):
            check_name(bad)


# --- certificate identity ------------------------------------------------------------------------------

def test_identity_is_the_single_common_name():
    cert = {"subject": ((("organizationName", "Fleet"),), (("commonName", "6a1f"),)),
            "subjectAltName": (("URI", "urn:other"), ("DNS", "host"))}
    found = from_peercert(cert)
    assert found is not None and found.common_name == "6a1f" and found.subject == "O=Fleet, CN=6a1f"
    two = from_peercert({"subject": ((("commonName", "a"),), (("commonName", "b"),))})
    assert two is not None and two.common_name is None
    none = from_peercert({"subject": ((("organizationName", "Fleet"),),), "subjectAltName": (("URI", "x"),)})
    assert none is not None and none.common_name is None
    assert from_peercert(None) is None and from_peercert({}) is None


# --- streamed reads ---------------------------------------------------------------------------------

def test_groups_keep_order_and_bound_size():
    index = [(10, 100), (9, 100), (8, 1000), (7, 5), (6, 5)]
    assert plan_groups(index, budget=250) == [[10, 9], [8], [7, 6]]
    assert plan_groups(index, budget=10_000, most=2) == [[10, 9], [8, 7], [6]]
    assert plan_groups([]) == []


@given(st.lists(st.integers(0, 5000), max_size=200), st.integers(1, 4000), st.integers(1, 20))
def test_groups_property(sizes, budget, most):
    index = [(1000 - i, n) for i, n in enumerate(sizes)]
    groups = plan_groups(index, budget, most)
    assert [i for g in groups for i in g] == [i for i, _ in index]
    size = dict(index)
    for g in groups:
        assert 1 <= len(g) <= most
        assert len(g) == 1 or sum(size[i] for i in g) <= budget


def test_cursor_and_framing():
    assert next_cursor([(9, 1), (7, 1)], limit=2) == 7
    assert next_cursor([(9, 1)], limit=2) is None and next_cursor([], limit=1) is None
    assert opening(7) + CLOSING == b'{"next_before_id":7,"records":[]}'
    assert opening(None) + CLOSING == b'{"next_before_id":null,"records":[]}'


def test_before_id_parameter():
    assert parse_query({"before_id": "17"}).before_id == 17
    with pytest.raises(QueryRejected, match="Cursor"):
        parse_query({"before_id": "-1"})
