"""Encrypted online backups of the store (and the audit database): write, verify, restore.

Taking a backup: SQLite's online backup API copies a consistent snapshot of ``store.db`` (and
``audit.db`` when present) into ``data_dir/tmp`` while the agent keeps running — a snapshot is one
read transaction, so a commit is either wholly in it or wholly absent. The copies (which hold only
ciphertext for personal fields) are then encrypted as one chunked stream and removed.

File format (all integers big-endian)::

    b"SLSNBAK1" | u32 header length | header JSON | chunk* ; chunk = u32 length | 12-byte nonce | ct

The header names the backup id, the KEK id, the wrapped per-backup DEK and the members (name,
size, sha256). Each chunk is AES-256-GCM under the DEK with
AAD = ``"silson:v1:backup:" + backup_id + ":" + index + ":" + final + ":" + sha256(header)``: the
index stops reordering, the final flag (1 only on the last chunk) makes truncation detectable, and
the header digest stops header edits. Keys are never inside a backup: opening one needs the KEK
from ``keys/`` (security.md §5).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.clock import utc_iso
from agent.errors import IntegrityError, UnavailableError
from agent.fsutil import atomic_write, ensure_dir, fsync_dir
from agent.keys import KEK_RE, KeyRing, check_key_file
from agent.store import crypto
from agent.store.ids import new_entry_id

if TYPE_CHECKING:
    from agent.store.store import Store

MAGIC = b"SLSNBAK1"
CHUNK_SIZE = 1 << 20
MAX_HEADER = 1 << 16
AUDIT_FILE = "audit.db"


def _chunk_aad(backup_id: str, index: int, final: bool, header_digest: bytes) -> bytes:
    return f"silson:v1:backup:{backup_id}:{index}:{int(final)}:".encode() + header_digest


def _new_tmp(tmp_dir: Path, suffix: str) -> Path:
    """A generated temp name (never derived from data) created 0600 in ``data_dir/tmp``."""
    ensure_dir(tmp_dir)
    path = tmp_dir / f"bk-{secrets.token_hex(8)}{suffix}"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + suffix).unlink()


def snapshot(src_path: Path, dst_path: Path) -> None:
    """Copy a consistent snapshot of a live SQLite database with the online backup API."""
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(str(dst_path))
    try:
        src.backup(dst)  # pages=-1: the whole database in one step = one read snapshot
        dst.execute("PRAGMA journal_mode = DELETE")  # a self-contained file, no -wal beside it
    finally:
        dst.close()
        src.close()


def _sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_SIZE):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _db_generation(path: Path) -> tuple[int, str | None]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = dict(
            conn.execute("SELECT key, value FROM kv WHERE key IN ('generation', 'store_id')").fetchall()
        )
    except sqlite3.Error:
        rows = {}
    finally:
        conn.close()
    return int(rows.get("generation", 0) or 0), rows.get("store_id")


BACKUP_REGISTRY_PREFIX = "backup_kek:"  # kv rows: backup_id -> {kek_id, created_at} (no path, no PHI)


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def write_backup(store: Store, out_path: Path) -> dict[str, Any]:
    """Snapshot, encrypt and atomically write a backup; returns its (non-personal) header info."""
    tmp_dir = store.data_dir / "tmp"
    members: list[tuple[str, Path]] = []
    try:
        store_copy = _new_tmp(tmp_dir, ".db")
        members.append(("store.db", store_copy))
        snapshot(store.db.path, store_copy)
        audit = store.data_dir / AUDIT_FILE
        if audit.exists():
            audit_copy = _new_tmp(tmp_dir, ".db")
            members.append((AUDIT_FILE, audit_copy))
            snapshot(audit, audit_copy)
        generation, store_id = _db_generation(store_copy)
        kek_id, kek = store._refresh_current_kek()
        created_at = utc_iso(store.clock.now())
        info = _encrypt_members(members, out_path, kek_id, kek, generation, store_id, created_at)
        in_backup_dir = store.backup_dir is not None and _same_dir(out_path.parent, Path(store.backup_dir))
        if not in_backup_dir:
            # Written elsewhere (`backup --out`): it keeps its KEK from retirement for backup.keep
            # days. Backups in backup.dir are found there (and expire by count, nightly job).
            store.kv_set(
                BACKUP_REGISTRY_PREFIX + str(info["backup_id"]),
                json.dumps({"kek_id": kek_id, "created_at": created_at}, sort_keys=True),
            )
        return info
    except OSError as exc:
        if exc.errno == 28:
            from agent.errors import DiskFullError

            raise DiskFullError("disk full while writing the backup; no backup file was written") from None
        raise
    finally:
        for _, path in members:
            _remove_db(path)


def _encrypt_members(
    members: list[tuple[str, Path]],
    out_path: Path,
    kek_id: str,
    kek: bytes,
    generation: int,
    store_id: str | None,
    created_at: str,
) -> dict[str, Any]:
    backup_id = new_entry_id("bak")
    dek = crypto.new_dek()
    wrap_nonce, wrapped = crypto.wrap_dek(dek, backup_id, 0, kek_id, kek)
    info = []
    for name, path in members:
        size, digest = _sha256_file(path)
        info.append({"name": name, "size": size, "sha256": digest})
    header = {
        "format": 1,
        "backup_id": backup_id,
        "created_at": created_at,
        "kek_id": kek_id,
        "wrap_nonce": wrap_nonce.hex(),
        "wrapped_dek": wrapped.hex(),
        "chunk_size": CHUNK_SIZE,
        "members": info,
        "generation": generation,
        "store_id": store_id,
    }
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    header_digest = hashlib.sha256(header_bytes).digest()
    aead = AESGCM(dek)
    ensure_dir(out_path.parent)
    tmp = out_path.with_name(f".{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(MAGIC + len(header_bytes).to_bytes(4, "big") + header_bytes)
            index = 0
            for is_last, block in _lookahead(_stream(members)):
                nonce = os.urandom(12)
                ct = aead.encrypt(nonce, block, _chunk_aad(backup_id, index, is_last, header_digest))
                out.write(len(ct).to_bytes(4, "big") + nonce + ct)
                index += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out_path.parent)
    return {k: header[k] for k in ("backup_id", "created_at", "kek_id", "members", "generation")} | {
        "chunks": index
    }


def _stream(members: list[tuple[str, Path]]) -> Iterator[bytes]:
    buf = b""
    for _, path in members:
        with open(path, "rb") as fh:
            while block := fh.read(CHUNK_SIZE):
                buf += block
                while len(buf) >= CHUNK_SIZE:
                    yield buf[:CHUNK_SIZE]
                    buf = buf[CHUNK_SIZE:]
    yield buf  # possibly empty: the final chunk always exists so truncation is visible


def _lookahead(items: Iterator[bytes]) -> Iterator[tuple[bool, bytes]]:
    prev: bytes | None = None
    for item in items:
        if prev is not None:
            yield False, prev
        prev = item
    if prev is not None:
        yield True, prev


def read_header(path: Path) -> dict[str, Any]:
    """The header of a backup file (no key needed); ``IntegrityError`` when it is not one."""
    with open(path, "rb") as fh:
        return _read_header(fh)[0]


def _read_header(fh: IO[bytes]) -> tuple[dict[str, Any], bytes]:
    if fh.read(8) != MAGIC:
        raise IntegrityError("integrity error: not a silson-agent backup file (bad magic)")
    n = int.from_bytes(fh.read(4), "big")
    if not 0 < n <= MAX_HEADER:
        raise IntegrityError("integrity error: backup header is corrupt")
    raw = fh.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict) or header.get("format") != 1:
            raise ValueError
    except ValueError:
        raise IntegrityError("integrity error: backup header is corrupt") from None
    return header, raw


def backup_kek_ids(backup_dir: Path) -> set[str]:
    """KEK ids that backups in ``backup_dir`` depend on (they keep the KEK from retirement)."""
    ids: set[str] = set()
    if backup_dir and backup_dir.is_dir():
        for entry in backup_dir.iterdir():
            if entry.is_file():
                with contextlib.suppress(OSError, IntegrityError):
                    ids.add(str(read_header(entry)["kek_id"]))
    return ids


def _kek_for(keyring: KeyRing, kek_id: str) -> bytes:
    kek = keyring.keks.get(kek_id)
    if kek is None:
        path = keyring.keys_dir / f"{kek_id}.key"
        if not path.exists():
            # Exit 6, not 4: without its KEK the backup cannot be authenticated (or its header was edited).
            raise IntegrityError(
                f"the backup needs key-encryption key {kek_id}, which is not in {keyring.keys_dir} "
                "(retired, or keys from another installation)"
            )
        check_key_file(path)
        kek = path.read_bytes()
    return kek


def decrypt_backup(path: Path, keyring: KeyRing, tmp_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Authenticate every chunk and write the members to temp files; caller removes them.

    Raises ``IntegrityError`` (exit 6) on any modified, reordered, missing or truncated chunk.
    """
    outputs: dict[str, Path] = {}
    ok = False
    try:
        with open(path, "rb") as fh:
            header, raw = _read_header(fh)
            digest = hashlib.sha256(raw).digest()
            try:
                backup_id = str(header["backup_id"])
                kek_id = str(header["kek_id"])
                wrap_nonce, wrapped = (
                    bytes.fromhex(header["wrap_nonce"]),
                    bytes.fromhex(header["wrapped_dek"]),
                )
                members: list[dict[str, Any]] = [
                    {"name": str(m["name"]), "size": int(m["size"]), "sha256": str(m["sha256"])}
                    for m in header["members"]
                ]
                if any(m["name"] not in ("store.db", AUDIT_FILE) or m["size"] < 0 for m in members):
                    raise ValueError
                if not KEK_RE.match(f"{kek_id}.key"):  # names a key file: never a path
                    raise ValueError
            except (KeyError, ValueError, TypeError):
                raise IntegrityError("integrity error: backup header is corrupt") from None
            kek = _kek_for(keyring, kek_id)
            dek = crypto.unwrap_dek(backup_id, 0, kek_id, kek, wrap_nonce, wrapped, what="backup")
            aead = AESGCM(dek)
            handles = []
            for m in members:
                p = _new_tmp(tmp_dir, ".db")
                outputs[m["name"]] = p
                handles.append((m, open(p, "wb"), hashlib.sha256()))
            try:
                member_i, written = 0, 0
                index, final_seen = 0, False
                while True:
                    head = fh.read(4)
                    if not head:
                        break
                    if final_seen:
                        raise IntegrityError("integrity error: backup has data after its final chunk")
                    n = int.from_bytes(head, "big")
                    nonce = fh.read(12)
                    ct = fh.read(n)
                    if len(head) != 4 or len(nonce) != 12 or len(ct) != n or n > CHUNK_SIZE + 16:
                        raise IntegrityError(f"integrity error: backup chunk {index} is truncated")
                    plain = None
                    for final in (False, True):
                        try:
                            plain = aead.decrypt(nonce, ct, _chunk_aad(backup_id, index, final, digest))
                            final_seen = final
                            break
                        except InvalidTag:
                            continue
                    if plain is None:
                        raise IntegrityError(f"integrity error: backup chunk {index} failed authentication")
                    while plain:
                        if member_i >= len(handles):
                            raise IntegrityError(
                                "integrity error: backup holds more data than its header lists"
                            )
                        m, out, h = handles[member_i]
                        take = plain[: m["size"] - written]
                        out.write(take)
                        h.update(take)
                        written += len(take)
                        plain = plain[len(take) :]
                        if written == m["size"]:
                            member_i, written = member_i + 1, 0
                    index += 1
                if not final_seen:
                    raise IntegrityError("integrity error: backup is truncated (final chunk missing)")
                while member_i < len(handles) and handles[member_i][0]["size"] == 0:
                    member_i += 1
                if member_i != len(handles):
                    raise IntegrityError("integrity error: backup is truncated (member incomplete)")
            finally:
                for _, out, _h in handles:
                    out.close()
            for m, _out, h in handles:
                if h.hexdigest() != m["sha256"]:
                    raise IntegrityError(f"integrity error: backup member {m['name']} digest mismatch")
        ok = True
        return header, outputs
    finally:
        if not ok:
            for p in outputs.values():
                _remove_db(p)


def _integrity_check(path: Path, name: str) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(
            f"integrity error: backup member {name} is not a valid database ({exc})"
        ) from None
    finally:
        conn.close()
    if rows != ["ok"]:
        raise IntegrityError(
            f"integrity error: backup member {name} fails integrity_check: {'; '.join(rows)[:300]}"
        )


def verify_backup(path: Path, keyring: KeyRing, tmp_dir: Path) -> dict[str, Any]:
    """``backup verify``: every chunk authenticated and every database inside passes integrity_check."""
    header, outputs = decrypt_backup(path, keyring, tmp_dir)
    try:
        for name, p in outputs.items():
            _integrity_check(p, name)
    finally:
        for p in outputs.values():
            _remove_db(p)
    return {k: header[k] for k in ("backup_id", "created_at", "kek_id", "members", "generation")}


def restore_backup(
    path: Path,
    data_dir: Path,
    keyring: KeyRing,
    *,
    force: bool = False,
    before_store: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Put the backup's ``store.db`` (and, when the live chain lacks it, its ``audit.db``) in
    ``data_dir``; the agent must not be running.

    Refuses (``UnavailableError``, exit 5) when the current store's generation is newer than the
    backup's, unless ``force``. The audit chain is append-only, so a live ``audit.db`` that still
    holds the backup's last record unchanged (it was appended to since) is kept. Otherwise the
    backup's chain is the history to keep: it is restored — when ``audit.db`` is missing (the data
    folder was lost), or when it holds another chain (started after the loss), which is then kept
    beside it as ``audit.db.replaced-<UTC time>``, never deleted. ``before_store`` runs once the
    audit chain is in place and before the store is replaced: the command writes its audit record
    there, so a restore whose record cannot be written changes no store (fail closed).
    """
    from agent.store.store import STORE_FILE

    ensure_dir(data_dir)
    tmp_dir = ensure_dir(data_dir / "tmp")
    header, outputs = decrypt_backup(path, keyring, tmp_dir)
    try:
        for name, p in outputs.items():
            _integrity_check(p, name)
        target = data_dir / STORE_FILE
        current_gen = None
        if target.exists():
            _checkpoint(target)
            current_gen, _ = _db_generation(target)
            if current_gen > int(header.get("generation", 0)) and not force:
                raise UnavailableError(
                    f"the current store is newer than the backup (generation {current_gen} > "
                    f"{header.get('generation', 0)}); use --force to overwrite it"
                )
        restored: list[str] = []
        set_aside: str | None = None
        audit_copy = outputs.get(AUDIT_FILE)
        if audit_copy is not None:
            dest = data_dir / AUDIT_FILE
            if dest.exists():
                _checkpoint(dest)
                if not _audit_continues(dest, audit_copy):
                    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
                    aside = dest.with_name(f"{AUDIT_FILE}.replaced-{stamp}")
                    _remove_sidecars(dest)  # checkpointed above
                    os.replace(dest, aside)
                    set_aside = aside.name
                    _split_anchors(data_dir, audit_copy, stamp)
            if not dest.exists():
                _put_in_place(audit_copy, dest)
                restored.append(AUDIT_FILE)
            fsync_dir(data_dir)
        if before_store is not None:
            before_store()
        store_copy = outputs.get(STORE_FILE)
        if store_copy is not None:
            if target.exists():
                _checkpoint(target)
                _carry_replay_memory(target, store_copy)
            _put_in_place(store_copy, target)
            restored.insert(0, STORE_FILE)
        fsync_dir(data_dir)
        return {
            "backup_id": header["backup_id"],
            "restored": restored,
            "audit_set_aside": set_aside,
            "previous_generation": current_gen,
            "generation": header.get("generation"),
        }
    finally:
        for p in outputs.values():
            _remove_db(p)


def _remove_sidecars(db: Path) -> None:
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(db) + suffix).unlink()


def _put_in_place(copy: Path, dest: Path) -> None:
    _remove_sidecars(dest)  # the old WAL first, or SQLite would replay it onto the restored file
    os.chmod(copy, 0o600)
    os.replace(copy, dest)


def _audit_continues(live: Path, backed_up: Path) -> bool:
    """The live chain holds the backed-up chain's last record, byte for byte."""
    last = _read_one(backed_up, "SELECT seq, record FROM records ORDER BY seq DESC LIMIT 1", ())
    if last is None:
        return True  # the backup's chain is empty: nothing of it can be lost
    same = _read_one(live, "SELECT record FROM records WHERE seq = ?", (last[0],))
    return same is not None and same[0] == last[1]


def _carry_replay_memory(current: Path, restored: Path) -> None:
    """Request ids seen since the backup stay remembered (relay-api.md §4: replay memory is
    persisted so that nothing reopens the window — a restore must not either)."""
    conn = sqlite3.connect(f"file:{restored}", uri=True, timeout=30)
    try:
        conn.execute("ATTACH DATABASE ? AS live", (f"file:{current}?mode=ro",))
        with conn:
            conn.execute(
                "INSERT OR IGNORE INTO main.replay (request_id, first_seen) "
                "SELECT request_id, first_seen FROM live.replay"
            )
        conn.execute("DETACH DATABASE live")
    except sqlite3.Error:
        pass  # an unreadable current store has no memory to carry; the restore goes on
    finally:
        conn.close()


def _split_anchors(data_dir: Path, chain: Path, stamp: str) -> None:
    """The anchor file follows its chain: lines naming a record of the restored ``chain`` (same
    seq and hash) stay, the others go to ``audit-anchors.jsonl.replaced-<stamp>`` beside the set-
    aside chain. Lines are moved whole, signatures untouched."""
    from agent.audit.anchors import ANCHOR_FILE

    path = data_dir / ANCHOR_FILE
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return
    hashes: dict[int, str] = {}
    conn = sqlite3.connect(f"file:{chain}?mode=ro", uri=True)
    try:
        for seq, text in conn.execute("SELECT seq, record FROM records"):
            with contextlib.suppress(ValueError, TypeError):
                hashes[int(seq)] = str(json.loads(text).get("hash"))
    finally:
        conn.close()
    keep: list[bytes] = []
    other: list[bytes] = []
    for line in lines:
        try:
            entry = json.loads(line)
            seq = entry.get("seq") if isinstance(entry, dict) else None
            ours = isinstance(seq, int) and hashes.get(seq) == entry.get("hash")
        except ValueError:
            ours = False
        (keep if ours else other).append(line)
    if other:
        atomic_write(path.with_name(f"{ANCHOR_FILE}.replaced-{stamp}"), b"".join(other), 0o600)
    atomic_write(path, b"".join(keep), 0o600)


def _read_one(path: Path, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _checkpoint(path: Path) -> None:
    conn = sqlite3.connect(str(path), timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.DatabaseError:
        pass
    finally:
        conn.close()
