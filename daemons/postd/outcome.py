"""What a collector's answer (or curl's failure) means for the record that was POSTed.

Pure: it takes the response as values and returns a verdict. The rules
(collector-contract.md §4-6, §10):

* 2xx: delivered.
* 408, 429, 5xx and every connection-level failure: try again later.
* 400 `Telemetry ID mismatch`: the TID is wrong for every record, a configuration error.
  So are answers that say nothing about the record but everything about where it was
  sent (401, 403, 404, 405, 407, a redirect, a malformed URL, an unreadable client
  certificate): rejecting record after record for them would throw the queue away
  over a typo in `server`.
* any other 4xx: the collector will never take this record; rejected for good.
"""

from __future__ import annotations

import enum
import functools
import json
from dataclasses import dataclass

from telemetry.daemons.postd.backoff import parse_retry_after

TID_MISMATCH = "Telemetry ID mismatch"
DETAIL_MAX = 200

# Statuses about the endpoint, not the record.
_ENDPOINT_STATUSES = frozenset({401, 403, 404, 405, 407})
_RETRY_STATUSES = frozenset({408, 429})

# curl errors that no retry can fix without the administrator (CURLE_*).
CURLE_UNSUPPORTED_PROTOCOL = 1
CURLE_URL_MALFORMAT = 3
CURLE_SSL_CERTPROBLEM = 58
CURLE_SSL_CACERT_BADFILE = 77
_CONFIG_CURL_ERRORS = frozenset(
    {CURLE_UNSUPPORTED_PROTOCOL, CURLE_URL_MALFORMAT, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CACERT_BADFILE}
)


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"
    RETRY = "retry"
    CONFIG_ERROR = "config-error"


@dataclass(frozen=True)
class Response:
    """One finished transfer: `status` 0 when no HTTP answer was read."""

    status: int = 0
    curl_error: int = 0
    curl_message: str = ""
    retry_after: str | None = None
    body: bytes = b""


@dataclass(frozen=True)
class Classified:
    """What an attempt's result means for the record: the verdict and the words journaled."""
    verdict: Verdict
    detail: str
    status: int | None = None
    retry_after: float | None = None  # seconds, when the collector asked for a wait


def excerpt(body: bytes, limit: int = DETAIL_MAX) -> str:
    """The collector's `{"message": ...}` if it sent one, else the start of the body, on one line."""
    text = body[: limit * 8].decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        text = doc["message"]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.lru_cache(maxsize=8)
def _delivered(status: int) -> Classified:
    """The same value for every record a status takes (one per record was measurable)."""
    return Classified(Verdict.DELIVERED, f"HTTP {status}", status)


def classify(resp: Response, now: float) -> Classified:
    if resp.curl_error:
        detail = f"curl error {resp.curl_error}: {resp.curl_message or 'no message'}"
        if resp.curl_error in _CONFIG_CURL_ERRORS:
            return Classified(Verdict.CONFIG_ERROR, detail)
        return Classified(Verdict.RETRY, detail)
    status = resp.status
    if 200 <= status <= 299:
        return _delivered(status)
    message = excerpt(resp.body)
    detail = f"HTTP {status}" + (f": {message}" if message else "")
    if status in _RETRY_STATUSES or 500 <= status <= 599:
        return Classified(Verdict.RETRY, detail, status, parse_retry_after(resp.retry_after, now))
    if status == 400 and message == TID_MISMATCH:
        return Classified(Verdict.CONFIG_ERROR, detail + " (check 'tidheader')", status)
    if status in _ENDPOINT_STATUSES or 300 <= status <= 399:
        return Classified(Verdict.CONFIG_ERROR, detail + " (check 'server' and the TLS settings)", status)
    if 400 <= status <= 499:
        return Classified(Verdict.REJECTED, detail, status)
    return Classified(Verdict.RETRY, detail or f"unexpected HTTP status {status}", status)
