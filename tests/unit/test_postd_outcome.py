"""The classifier of collector answers and curl failures."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry.daemons.postd.outcome import Response, Verdict, classify, excerpt

NOW = 1_700_000_000.0


def msg(text: str) -> bytes:
    return json.dumps({"message": text}).encode()


@given(st.integers(min_value=200, max_value=299))
def test_2xx_is_delivered(code):
    assert classify(Response(code), NOW).verdict is Verdict.DELIVERED


@given(st.integers(min_value=500, max_value=599))
def test_5xx_is_retried(code):
    assert classify(Response(code), NOW).verdict is Verdict.RETRY


@pytest.mark.parametrize("code", [408, 429])
def test_408_and_429_are_retried_with_retry_after(code):
    c = classify(Response(code, retry_after="120"), NOW)
    assert c.verdict is Verdict.RETRY and c.retry_after == 120 and c.status == code


@given(st.integers(min_value=400, max_value=499).filter(lambda c: c not in (401, 403, 404, 405, 407, 408, 429)))
def test_other_4xx_is_rejected_for_good(code):
    c = classify(Response(code, body=msg("Event id is invalid")), NOW)
    assert c.verdict is Verdict.REJECTED
    assert c.detail == f"HTTP {code}: Event id is invalid"


def test_tid_mismatch_is_a_configuration_error():
    c = classify(Response(400, body=msg("Telemetry ID mismatch")), NOW)
    assert c.verdict is Verdict.CONFIG_ERROR and "tidheader" in c.detail


@pytest.mark.parametrize("code", [301, 302, 308, 401, 403, 404, 405, 407])
def test_answers_about_the_endpoint_are_configuration_errors(code):
    assert classify(Response(code), NOW).verdict is Verdict.CONFIG_ERROR


@pytest.mark.parametrize("err, verdict", [
    (7, Verdict.RETRY),  # could not connect
    (28, Verdict.RETRY),  # timeout
    (52, Verdict.RETRY),  # empty reply
    (56, Verdict.RETRY),  # recv failure
    (60, Verdict.RETRY),  # peer certificate not verified: may be fixed on the server
    (1, Verdict.CONFIG_ERROR),
    (3, Verdict.CONFIG_ERROR),
    (58, Verdict.CONFIG_ERROR),
    (77, Verdict.CONFIG_ERROR),
])
def test_curl_errors(err, verdict):
    c = classify(Response(0, curl_error=err, curl_message="boom"), NOW)
    assert c.verdict is verdict and f"curl error {err}" in c.detail


@given(st.integers(min_value=0, max_value=999), st.binary(max_size=3000), st.integers(min_value=0, max_value=100))
def test_classify_is_total(code, body, err):
    c = classify(Response(code, curl_error=err, body=body), NOW)
    assert isinstance(c.verdict, Verdict)
    assert "\n" not in c.detail and len(c.detail) < 300


def test_excerpt_is_one_short_line():
    assert excerpt(b"<html>\n<body>\nInternal   error</body></html>") == "<html> <body> Internal error</body></html>"
    assert len(excerpt(b"x" * 5000)) == 200
    assert excerpt(msg("severity value is out of range")) == "severity value is out of range"
