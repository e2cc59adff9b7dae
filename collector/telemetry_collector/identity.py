"""Who a client certificate names (pure): its subject Common Name.

The identity is the subject CN and nothing else: subject alternative names (DNS, IP, URI)
are not consulted, because CAs commonly put host names there and a host name is not a
machine.  A certificate with no CN, or with more than one, has no identity.  The CN is the
machine id for ingestion (a record's Machine-Id must equal it) and the reader's name for
reads (`telemetry-collector token add NAME --certificate`).

The server's protocol (`protocol`) reads the verified peer certificate once per connection
and hands it to the application in the ASGI scope under `SCOPE_KEY`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SCOPE_KEY = "telemetry.client_certificate"  # in scope["extensions"]


@dataclass(frozen=True)
class ClientCertificate:
    """A verified client certificate, as far as the collector uses it."""

    common_name: str | None
    subject: str  # for log lines: the subject as ``CN=…, O=…``


def from_peercert(cert: Mapping[str, object] | None) -> ClientCertificate | None:
    """What `ssl.SSLSocket.getpeercert()` returned for a verified peer, or None without one."""
    if not cert:
        return None
    rdns = cert.get("subject") or ()
    names: list[str] = []
    parts: list[str] = []
    if isinstance(rdns, tuple | list):
        for rdn in rdns:
            if not isinstance(rdn, tuple | list):
                continue
            for pair in rdn:
                if isinstance(pair, tuple | list) and len(pair) == 2:
                    key, value = str(pair[0]), str(pair[1])
                    parts.append(f"{_SHORT.get(key, key)}={value}")
                    if key == "commonName":
                        names.append(value)
    return ClientCertificate(common_name=names[0] if len(names) == 1 else None, subject=", ".join(parts))


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
          "localityName": "L", "stateOrProvinceName": "ST"}


def scope_extension(cert: ClientCertificate) -> dict[object, object]:
    """The ASGI scope extension (a dict, as the ASGI spec has extensions) for `cert`."""
    return {"common_name": cert.common_name, "subject": cert.subject}


def of_scope(scope: Mapping[str, object]) -> ClientCertificate | None:
    extensions = scope.get("extensions")
    if isinstance(extensions, Mapping):
        found = extensions.get(SCOPE_KEY)
        if isinstance(found, Mapping):
            name, subject = found.get("common_name"), found.get("subject")
            return ClientCertificate(name if isinstance(name, str) else None, str(subject or ""))
    return None
