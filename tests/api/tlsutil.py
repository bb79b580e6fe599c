"""Raw-socket helpers for the TLS tests: what exactly does a client receive on the wire?"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

HEALTH_REQUEST = b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n"


def client_context(
    server_ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(server_ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def exchange(
    address: tuple[str, int], ctx: ssl.SSLContext, request: bytes = HEALTH_REQUEST, timeout: float = 5.0
) -> tuple[bool, bytes, ssl.SSLSocket | None]:
    """Handshake, send ``request``, read until EOF/timeout/error.

    Returns (handshake_completed_on_client_side, bytes received, the socket for inspection).
    """
    raw = socket.create_connection(address, timeout=timeout)
    try:
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
    except (ssl.SSLError, OSError):
        raw.close()
        return False, b"", None
    received = b""
    try:
        tls.sendall(request)
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received and _complete(received):
                break
    except (ssl.SSLError, OSError):
        pass
    return True, received, tls


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False
