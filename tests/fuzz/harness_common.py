"""Shared body of the atheris harnesses: the property every parser must keep on any input.

A reader returns problems for bad input and never raises (security.md §9). Each harness module
calls `check_read` with its own extension/profile; `run_all.py` runs the harnesses under atheris
for a bounded number of iterations and `test_fuzz_harnesses.py` runs the same bodies on random
inputs in the normal test suite.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from pathlib import Path

from agent.api.problems import ERROR_CODES, ProblemError
from agent.api.validation import parse_json, validate_fetch, validate_search
from agent.config import ConfigError, build_config
from agent.documents.problems import Problem
from agent.errors import IntegrityError
from agent.formats import read_export
from agent.formats.profiles import Profile, ProfileError, parse_profile
from agent.formats.result import Record
from agent.keys import load_keyring
from agent.ops.provision import read_bundle
from agent.store.backup import verify_backup
from tests.store.storehelp import commit_docs, make_config, make_doc, open_store

READER_RULES = frozenset({"R-002", "R-003", "R-004", "R-005", "R-021", "R-025"})


def check_read(data: bytes, file_name: str, profile: Profile | None = None) -> None:
    """Read ``data``; raise AssertionError if the reader broke its contract (anything else
    raised by the reader propagates and is a finding too)."""
    result = read_export(data, file_name=file_name, profile=profile)
    records = list(result.records)
    problems = result.problems
    assert all(isinstance(p, Problem) and p.rule in READER_RULES for p in problems), problems
    assert all(isinstance(r, Record) and isinstance(r.document, dict) for r in records)
    assert records or problems, "a file without records must be reported (R-004)"


# A pointer names contract members only (relay-api.md §7): never a key or value the relay sent.
_POINTER = re.compile(
    r"^(/(request_id|sent_at|relay_id|claim|claim_no|consent_id|patient|name|rrn|period|from|to|"
    r"document_types|document_ids|format|[0-9]+))*$"
)


def check_relay_request(data: bytes) -> None:
    """A relay request body: ``parse_json`` gives a JSON object or ``bad-request``; the search and
    fetch validators accept it or raise a 422 whose errors are fixed (pointer, code) pairs."""
    try:
        body = parse_json(data)
    except ProblemError as exc:
        assert exc.name == "bad-request", exc.name
        return
    assert isinstance(body, dict)
    for validate in (validate_search, lambda b: validate_fetch(b, max_ids=100)):
        try:
            validate(body)
        except ProblemError as exc:
            assert exc.name in {"validation-failed", "too-many-documents", "clock-skew"}, exc.name
            for error in exc.errors:
                assert error.code in ERROR_CODES, error
                assert _POINTER.match(error.pointer), error.pointer


def _toml(data: bytes) -> dict | None:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def check_profile(data: bytes) -> None:
    """A vendor profile (exports.md §3): a ``Profile`` or a ``ProfileError`` naming the key."""
    table = _toml(data)
    if table is None:
        return
    try:
        profile = parse_profile(table, source="fuzz.toml")
    except ProfileError as exc:
        assert str(exc).startswith("fuzz.toml"), str(exc)
        return
    assert isinstance(profile, Profile)


def check_config(data: bytes, base: Path) -> None:
    """agent.toml (cli.md §5): a ``Config`` or a ``ConfigError`` (exit 4), nothing else."""
    table = _toml(data)
    if table is None:
        return
    try:
        build_config(table, base / "agent.toml", base)
    except ConfigError as exc:
        assert str(exc), "a configuration error says what is wrong"


def check_bundle(data: bytes, workdir: Path) -> None:
    """A provisioning bundle (docs/provisioning.md) as a .tar.gz or .zip: a ``Bundle`` or a
    ``ConfigError`` (exit 4) naming the bundle — never another exception. Nothing is extracted."""
    suffix = ".zip" if data[:2] == b"PK" else ".tar.gz"
    path = workdir / f"bundle{suffix}"
    path.write_bytes(data)
    try:
        read_bundle(path)
    except ConfigError as exc:
        assert str(exc).startswith("provisioning bundle") and str(path) in str(exc), str(exc)


class BackupBench:
    """An installation with keys and one valid backup of a small store (the fuzzer's seed).

    ``shared()`` gives one per process tree: ``run_all`` makes the seed, and the harness process
    it starts finds the same keys through ``FUZZ_BACKUP_BENCH`` — a seed made under other keys
    would fail at its first check and the fuzzer would never get past the header.
    """

    _shared: BackupBench | None = None

    def __init__(self, root: Path) -> None:
        self.config = make_config(root / "inst")  # keys made once, reused when present
        self.seed = root / "seed.bak"
        if not self.seed.exists():
            store = open_store(self.config)
            try:
                commit_docs(store, [make_doc(i) for i in range(3)])
                store.backup(self.seed)
            finally:
                store.close()
        self.keyring = load_keyring(self.config.keys_dir)
        self.tmp = self.config.data_dir / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.input = root / "input.bak"

    @classmethod
    def shared(cls) -> BackupBench:
        if cls._shared is None:
            root = os.environ.get("FUZZ_BACKUP_BENCH") or tempfile.mkdtemp(prefix="fuzz-backup-")
            os.environ["FUZZ_BACKUP_BENCH"] = root
            cls._shared = cls(Path(root))
        return cls._shared


def check_backup(data: bytes, bench: BackupBench) -> None:
    """``backup verify`` of any bytes: the backup's summary, or an ``IntegrityError`` (exit 6) —
    never another exception, and no decrypted temp copy left behind."""
    bench.input.write_bytes(data)
    try:
        summary = verify_backup(bench.input, bench.keyring, bench.tmp)
    except IntegrityError:
        pass
    else:
        assert summary["kek_id"] == "kek-1"
    assert not any(bench.tmp.iterdir()), "a decrypted temp copy was left behind"
