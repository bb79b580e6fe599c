"""Key files under ``keys/`` (security.md §5): KEKs, the blind-index key and the signing key.

Layout: ``keys/kek-<n>.key`` (32 random bytes each; the highest ``n`` is current),
``keys/blind-index.key`` (32 random bytes), ``keys/signing.key`` (PKCS#8 PEM, P-256). Every key
file must be a regular file (not a symlink), owned by the effective user, with no group/other
permission bits; anything else is a ``ConfigError`` (exit 4) naming the file. Key material never
goes into the database, a log line or an exception message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import ConfigError
from agent.fsutil import atomic_write, ensure_dir, write_new
from agent.signing import Signer

KEK_RE = re.compile(r"^kek-([1-9][0-9]*)\.key\Z")
BLIND_INDEX_FILE = "blind-index.key"
SIGNING_FILE = "signing.key"


def check_key_file(path: Path) -> None:
    """Refuse a key file that others could read or swap (security.md §5, S-20)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ConfigError(f"key file {path} is missing") from None
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"key file {path} is a symbolic link; it must be a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"key file {path} is not a regular file")
    if os.name != "nt":
        if st.st_uid != os.geteuid():
            raise ConfigError(f"key file {path} is not owned by the user running the agent")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600 "
                f"(fix: chmod 600 {path})"
            )


def _read_secret(path: Path) -> bytes:
    check_key_file(path)
    data = path.read_bytes()
    if len(data) != 32:
        raise ConfigError(f"key file {path} does not hold a 32-byte key")
    return data


def blind_index(key: bytes, rrn13: str) -> str:
    """HMAC-SHA-256(key, "rrn:v1:" + 13 digits) as hex (relay-api.md §6.2, security.md §6.1)."""
    return hmac.new(key, b"rrn:v1:" + rrn13.encode("ascii"), hashlib.sha256).hexdigest()


def blind_index7(key: bytes, first7: str) -> str:
    """HMAC-SHA-256(key, "rrn7:v1:" + first 7 digits) for documents carrying only rrn_masked."""
    return hmac.new(key, b"rrn7:v1:" + first7.encode("ascii"), hashlib.sha256).hexdigest()


@dataclasses.dataclass
class KeyRing:
    """Every key the agent holds, loaded once at start."""

    keys_dir: Path
    keks: dict[str, bytes]  # kek_id ("kek-1") -> 32 bytes
    current_kek_id: str
    blind_index_key: bytes
    signing_key: ec.EllipticCurvePrivateKey | None

    @property
    def current_kek(self) -> bytes:
        return self.keks[self.current_kek_id]

    @property
    def signer(self) -> Signer:
        if self.signing_key is None:
            raise ConfigError(f"signing key {self.keys_dir / SIGNING_FILE} is missing")
        return Signer(self.signing_key)

    def rrn_index(self, rrn13: str) -> str:
        return blind_index(self.blind_index_key, rrn13)

    def rrn7_index(self, first7: str) -> str:
        return blind_index7(self.blind_index_key, first7)

    def add_kek(self) -> str:
        """Create ``kek-<n+1>.key`` and make it current; returns its id."""
        numbers = [int(k.split("-")[1]) for k in self.keks]
        new_id = f"kek-{max(numbers, default=0) + 1}"
        data = secrets.token_bytes(32)
        write_new(self.keys_dir / f"{new_id}.key", data)
        self.keks[new_id] = data
        self.current_kek_id = new_id
        return new_id

    def retire_kek(self, kek_id: str) -> None:
        """Overwrite and remove a KEK file no longer used by any record (crypto-shredding)."""
        if kek_id == self.current_kek_id:
            raise ValueError("cannot retire the current KEK")
        path = self.keys_dir / f"{kek_id}.key"
        if path.exists():
            shred_file(path)
        self.keks.pop(kek_id, None)


RETIRED_SIGNING_RE = re.compile(r"^signing-([0-9a-f]{16})\.retired\.key\Z")
RETIRED_SIGNING_KEEP_S = 30 * 86400  # security.md §5: private key kept 30 days after rotation


def shred_file(path: Path) -> None:
    """Overwrite a key file with random bytes, fsync, remove it."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.write(secrets.token_bytes(max(size, 32)))
        handle.flush()
        os.fsync(handle.fileno())
    path.unlink()


def expired_retired_signing_keys(keys_dir: Path, now_s: float) -> list[Path]:
    """Retired signing private keys (``keys rotate-signing``) older than 30 days, oldest first.

    Their public keys (``signing-<kid16>.pub.pem``) stay so older signatures remain verifiable."""
    found = []
    if keys_dir.is_dir():
        for entry in keys_dir.iterdir():
            if RETIRED_SIGNING_RE.match(entry.name):
                mtime = entry.stat().st_mtime
                if now_s - mtime > RETIRED_SIGNING_KEEP_S:
                    found.append((mtime, entry))
    return [entry for _, entry in sorted(found)]


def kek_files(keys_dir: Path) -> dict[str, Path]:
    found = {}
    if keys_dir.is_dir():
        for entry in keys_dir.iterdir():
            match = KEK_RE.match(entry.name)
            if match:
                found[f"kek-{match.group(1)}"] = entry
    return found


def load_keyring(keys_dir: Path, *, require_signing: bool = False) -> KeyRing:
    """Load and permission-check every key file (raises ``ConfigError``, exit 4)."""
    files = kek_files(keys_dir)
    if not files:
        raise ConfigError(f"no key-encryption key (kek-1.key) in {keys_dir}; run `silson-agent init`")
    keks = {kek_id: _read_secret(path) for kek_id, path in files.items()}
    current = max(keks, key=lambda k: int(k.split("-")[1]))
    bidx = _read_secret(keys_dir / BLIND_INDEX_FILE)
    signing = None
    signing_path = keys_dir / SIGNING_FILE
    if signing_path.exists() or require_signing:
        signing = load_signing_key(signing_path)
    return KeyRing(keys_dir, keks, current, bidx, signing)


def load_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    check_key_file(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        raise ConfigError(f"key file {path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"key file {path} is not an ECDSA P-256 key")
    return key


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_signing_key(path: Path, key: ec.EllipticCurvePrivateKey, *, replace: bool = False) -> None:
    (atomic_write if replace else write_new)(path, private_key_pem(key), 0o600)


def generate_keys(keys_dir: Path) -> None:
    """Create the KEK, blind-index and signing keys; refuses to overwrite any existing key."""
    ensure_dir(keys_dir)
    os.chmod(keys_dir, 0o700)
    existing = [
        p
        for p in (keys_dir / "kek-1.key", keys_dir / BLIND_INDEX_FILE, keys_dir / SIGNING_FILE)
        if p.exists()
    ] + list(kek_files(keys_dir).values())
    if existing:
        raise ConfigError(f"refusing to overwrite existing key {existing[0]}")
    write_new(keys_dir / "kek-1.key", secrets.token_bytes(32))
    write_new(keys_dir / BLIND_INDEX_FILE, secrets.token_bytes(32))
    write_signing_key(keys_dir / SIGNING_FILE, ec.generate_private_key(ec.SECP256R1()))
