"""Envelope encryption: the one place that encrypts and decrypts a record (security.md §4, §6.2).

Every record (document version, subject, archive entry, quarantine entry, ledger path) gets a fresh
256-bit data key (DEK). The content is sealed with AES-256-GCM under the DEK with
AAD = ``"silson:v1:<kind>:" + id + ":" + version``; the DEK is wrapped with AES-256-GCM under the
current KEK with AAD = ``"silson:v1:dek:" + id + ":" + version + ":" + kek_id``. Binding both to the
row means a ciphertext moved to another row, id, version or KEK fails authentication, which is
reported as ``IntegrityError`` naming the row — never as "not found" and never with partial
plaintext (GCM releases nothing before the tag is verified).

Random 96-bit nonces are safe because each DEK encrypts exactly one message and each KEK wraps
far fewer than 2^32 keys between rotations.

Speed (the store seals two records per document version): the AES-GCM context of a KEK is built
once and cached (building one costs about as much as a small encryption), and the DEK and both
nonces of a record come from one ``os.urandom`` call. The AADs are unchanged — they are contract.
"""

from __future__ import annotations

import dataclasses
import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.errors import IntegrityError

NONCE_BYTES = 12
KEY_BYTES = 32

KIND_DOC = "doc"
KIND_SUBJECT = "subject"
KIND_ARCHIVE = "archive"
KIND_QUARANTINE = "quarantine"
KIND_LEDGER = "ledger"

# A handful of KEKs exist at any time (current + those awaiting retirement); the bound only stops
# a long-lived process from accumulating contexts of keys rotated away long ago.
_KEK_CACHE_MAX = 16
_kek_aeads: dict[bytes, AESGCM] = {}
_kek_lock = threading.Lock()


def _kek_aead(kek: bytes) -> AESGCM:
    aead = _kek_aeads.get(kek)
    if aead is None:
        aead = AESGCM(kek)
        with _kek_lock:
            if len(_kek_aeads) >= _KEK_CACHE_MAX:
                _kek_aeads.pop(next(iter(_kek_aeads)))
            _kek_aeads[kek] = aead
    return aead


def forget_kek(kek: bytes) -> None:
    """Drop the cached context of a KEK being retired (its file is shredded by the key ring)."""
    with _kek_lock:
        _kek_aeads.pop(kek, None)


def content_aad(kind: str, record_id: str, version: int | str) -> bytes:
    return f"silson:v1:{kind}:{record_id}:{version}".encode()


def dek_aad(record_id: str, version: int | str, kek_id: str) -> bytes:
    return f"silson:v1:dek:{record_id}:{version}:{kek_id}".encode()


@dataclasses.dataclass(frozen=True, slots=True)
class Sealed:
    """What a row stores for one encrypted record (all bytes are ciphertext or random)."""

    kek_id: str
    wrap_nonce: bytes
    wrapped_dek: bytes
    nonce: bytes
    ciphertext: bytes

    def columns(self) -> tuple[str, bytes, bytes, bytes, bytes]:
        """The five sealed columns in table order (``kek_id, wrap_nonce, wrapped_dek, nonce, ciphertext``)."""
        return (self.kek_id, self.wrap_nonce, self.wrapped_dek, self.nonce, self.ciphertext)


def new_dek() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap_dek(dek: bytes, record_id: str, version: int | str, kek_id: str, kek: bytes) -> tuple[bytes, bytes]:
    nonce = os.urandom(NONCE_BYTES)
    return nonce, _kek_aead(kek).encrypt(nonce, dek, dek_aad(record_id, version, kek_id))


def unwrap_dek(
    record_id: str,
    version: int | str,
    kek_id: str,
    kek: bytes,
    wrap_nonce: bytes,
    wrapped_dek: bytes,
    *,
    what: str,
) -> bytes:
    try:
        return _kek_aead(kek).decrypt(wrap_nonce, wrapped_dek, dek_aad(record_id, version, kek_id))
    except (InvalidTag, ValueError):
        raise IntegrityError(f"integrity error: {what}: data key failed authentication") from None


def seal(kind: str, record_id: str, version: int | str, plaintext: bytes, kek_id: str, kek: bytes) -> Sealed:
    """Encrypt one record under a fresh DEK wrapped by ``kek``."""
    # One CSPRNG read for the DEK and both nonces: same randomness, a third of the calls.
    rnd = os.urandom(KEY_BYTES + 2 * NONCE_BYTES)
    dek, wrap_nonce, nonce = (
        rnd[:KEY_BYTES],
        rnd[KEY_BYTES : KEY_BYTES + NONCE_BYTES],
        rnd[KEY_BYTES + NONCE_BYTES :],
    )
    wrapped = _kek_aead(kek).encrypt(wrap_nonce, dek, dek_aad(record_id, version, kek_id))
    ciphertext = AESGCM(dek).encrypt(nonce, plaintext, content_aad(kind, record_id, version))
    return Sealed(kek_id, wrap_nonce, wrapped, nonce, ciphertext)


def open_sealed(
    kind: str, record_id: str, version: int | str, sealed: Sealed, kek: bytes, *, what: str
) -> bytes:
    """Decrypt one record; any authentication failure is an ``IntegrityError`` naming ``what``."""
    dek = unwrap_dek(record_id, version, sealed.kek_id, kek, sealed.wrap_nonce, sealed.wrapped_dek, what=what)
    try:
        return AESGCM(dek).decrypt(sealed.nonce, sealed.ciphertext, content_aad(kind, record_id, version))
    except (InvalidTag, ValueError):
        raise IntegrityError(f"integrity error: {what}: content failed authentication") from None


def rewrap(
    record_id: str,
    version: int | str,
    sealed: Sealed,
    old_kek: bytes,
    new_kek_id: str,
    new_kek: bytes,
    *,
    what: str,
) -> Sealed:
    """Re-wrap the DEK under another KEK; the content ciphertext is untouched (key rotation)."""
    dek = unwrap_dek(
        record_id, version, sealed.kek_id, old_kek, sealed.wrap_nonce, sealed.wrapped_dek, what=what
    )
    wrap_nonce, wrapped = wrap_dek(dek, record_id, version, new_kek_id, new_kek)
    return Sealed(new_kek_id, wrap_nonce, wrapped, sealed.nonce, sealed.ciphertext)
