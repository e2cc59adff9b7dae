"""Where and how records are POSTed: the collector URL, TLS files, concurrency and
timeouts, checked before the first request. Kept apart from the pycurl shell so that the
daemon loads libcurl only once it has something to send."""

from __future__ import annotations

import os
from dataclasses import dataclass

from telemetry.config import Config, tid_header
from telemetry.errors import TelemetryError


class DeliveryError(TelemetryError):
    """The HTTP settings cannot be used (bad URL scheme, unreadable certificate files)."""


@dataclass(frozen=True)
class DeliverySettings:
    """Where records go and with which credentials: what a change of config must reconnect for."""
    url: str
    cainfo: str = ""
    client_cert: str = ""
    client_key: str = ""
    max_in_flight: int = 4
    connect_timeout: int = 5
    request_timeout: int = 10


def delivery_settings(cfg: Config) -> DeliverySettings:
    return DeliverySettings(
        url=cfg.server,
        cainfo=cfg.cainfo,
        client_cert=cfg.tls_client_cert,
        client_key=cfg.tls_client_key,
        max_in_flight=cfg.max_in_flight,
        connect_timeout=cfg.connect_timeout,
        request_timeout=cfg.request_timeout,
    )


def check_config(cfg: Config) -> None:
    """Everything telempostd refuses to start with (telemctl checks it before a restart)."""
    if cfg.record_server_delivery_enabled:
        check_settings(delivery_settings(cfg))
    tid_header(cfg)


def check_settings(s: DeliverySettings) -> None:
    """Refuse at start what would otherwise fail every request."""
    scheme = s.url.split("://", 1)[0].lower() if "://" in s.url else ""
    if scheme not in ("http", "https"):
        raise DeliveryError(f"server {s.url!r} must be an http:// or https:// URL")
    for key, path in (("tls_client_cert", s.client_cert), ("tls_client_key", s.client_key)):
        if path and not os.access(path, os.R_OK):
            raise DeliveryError(f"{key} {path!r} cannot be read")
    if s.client_key and not s.client_cert:
        raise DeliveryError("tls_client_key is set but tls_client_cert is not")


class RequestRefused(TelemetryError):
    """curl would not take this request (it is the record's, not the collector's, fault)."""
