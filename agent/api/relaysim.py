"""Relay simulator client: what the national relay does on the wire (relay-api.md §4–§6).

Used by tests, the demo and ``acceptance``. It uses ``requests`` with a client certificate, the
pinned CA bundle as ``verify=`` (never the system store) and explicit timeouts on every call.
``verify_document`` checks one fetched entry the way a relay would (ES256 over the decoded
content bytes, ``content_sha256``, ``kid``) using ``cryptography`` directly.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from pathlib import Path
from typing import Any

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

DEFAULT_TIMEOUT = (5.0, 30.0)


def now_rfc3339(moment: dt.datetime | None = None) -> str:
    moment = (moment or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class RelayClient:
    """A relay node talking to one agent over mutual TLS (keep-alive session)."""

    def __init__(
        self,
        base_url: str,
        client_cert: str | Path,
        client_key: str | Path,
        ca_bundle: str | Path,
        *,
        relay_id: str = "silson24-relay-01",
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.relay_id = relay_id
        self.timeout = timeout
        self.session = requests.Session()
        self.session.cert = (str(client_cert), str(client_key))
        self.session.verify = str(ca_bundle)
        self.session.trust_env = False  # no proxies or netrc from the environment

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def envelope(self, *, request_id: str | None = None, sent_at: str | None = None) -> dict[str, Any]:
        return {
            "request_id": request_id or str(uuid.uuid4()),
            "sent_at": sent_at or now_rfc3339(),
            "relay_id": self.relay_id,
        }

    def post(
        self, path: str, body: dict[str, Any] | bytes, *, headers: dict[str, str] | None = None
    ) -> requests.Response:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        import json

        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
        return self.session.post(self.base_url + path, data=data, headers=hdrs, timeout=self.timeout)

    def health(self) -> requests.Response:
        return self.session.get(self.base_url + "/v1/health", timeout=self.timeout)

    def search(
        self,
        *,
        claim_no: str,
        consent_id: str,
        name: str,
        rrn: str,
        period_from: str,
        period_to: str,
        document_types: list[str] | None = None,
        request_id: str | None = None,
        sent_at: str | None = None,
        relay_id: str | None = None,
    ) -> requests.Response:
        body = self.envelope(request_id=request_id, sent_at=sent_at)
        if relay_id:
            body["relay_id"] = relay_id
        body.update(
            {
                "claim": {"claim_no": claim_no, "consent_id": consent_id},
                "patient": {"name": name, "rrn": rrn},
                "period": {"from": period_from, "to": period_to},
            }
        )
        if document_types is not None:
            body["document_types"] = document_types
        return self.post("/v1/documents/search", body)

    def fetch(
        self,
        *,
        claim_no: str,
        consent_id: str,
        document_ids: list[str],
        format: str | None = None,
        request_id: str | None = None,
        sent_at: str | None = None,
        relay_id: str | None = None,
    ) -> requests.Response:
        body = self.envelope(request_id=request_id, sent_at=sent_at)
        if relay_id:
            body["relay_id"] = relay_id
        body.update({"claim": {"claim_no": claim_no, "consent_id": consent_id}, "document_ids": document_ids})
        if format is not None:
            body["format"] = format
        return self.post("/v1/documents/fetch", body)


def verify_document(entry: dict[str, Any], public_key: ec.EllipticCurvePublicKey) -> bytes:
    """Check one fetched entry and return its content bytes; raises ``ValueError`` on any mismatch."""
    content = base64.b64decode(entry["content_base64"], validate=True)
    if hashlib.sha256(content).hexdigest() != entry["content_sha256"]:
        raise ValueError("content_sha256 does not match the content")
    sig = entry["signature"]
    if sig.get("alg") != "ES256":
        raise ValueError("unexpected signature algorithm")
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if hashlib.sha256(spki).hexdigest() != sig.get("kid"):
        raise ValueError("kid does not match the public key")
    value = sig["value"]
    if len(value) != 86:
        raise ValueError("signature is not 86 base64url characters")
    raw = base64.urlsafe_b64decode(value + "==")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        public_key.verify(der, content, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ValueError("signature does not verify") from None
    return content
