"""The one adapter between the relay API and the store, the audit log and the keys.

Every call the API makes into ``agent.store``, ``agent.audit`` and ``agent.keys`` goes through
``Backend`` so a change in those modules is absorbed here. Store failures (SQLite errors, a
closed database, a full disk) become ``StorageUnavailable``; an integrity failure stays
``IntegrityError``; the audit log's ``AuditUnavailableError`` passes through (fail closed).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from agent.clock import Clock, utc_iso
from agent.config import Config
from agent.errors import AuditUnavailableError, IntegrityError, UnavailableError

log = logging.getLogger("agent.api")


class StorageUnavailable(Exception):
    """The store cannot be read, or the replay/binding tables cannot be written (503)."""


@dataclasses.dataclass(frozen=True)
class Binding:
    claim_no: str
    consent_id: str
    subject_ref: str
    allowed_ids: frozenset[str]
    expires_at: float  # epoch seconds


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    hits: list[dict[str, Any]]  # §6.2 response entries
    withheld_count: int


@dataclasses.dataclass(frozen=True)
class FetchView:
    """What a fetch reads, from one store snapshot: the live binding of the claim (``None`` when
    there is none) and, only when it carries the request's consent id and allows every
    requested id, the current version of each of them (a purged id is absent)."""

    binding: Binding | None
    documents: dict[str, dict[str, Any]]


class BackendProtocol(Protocol):
    def storage_ok(self) -> bool: ...
    def audit_ok(self) -> bool: ...
    def signing_kid(self) -> str: ...
    def sign(self, data: bytes) -> str: ...
    def current_signer(self) -> Any: ...
    def relay_ids(self) -> frozenset[str] | None: ...
    def subject_ref(self, rrn13: str) -> str: ...
    def relay_request_submit(
        self, request_id: str, now: dt.datetime, relay_id: str
    ) -> concurrent.futures.Future[str]: ...
    def relay_request_outcome(self, submitted: concurrent.futures.Future[str]) -> str: ...
    def search(
        self,
        rrn13: str,
        name: str,
        period_from: dt.date,
        period_to: dt.date,
        types: tuple[str, ...],
        limit: int,
    ) -> SearchOutcome: ...
    def binding_get(self, claim_no: str, now: dt.datetime) -> Binding | None: ...
    def binding_extend(
        self,
        claim_no: str,
        consent_id: str,
        subject_ref: str,
        ids: Iterable[str],
        expires_at: float,
        now: dt.datetime,
    ) -> bool: ...
    def get_current(self, doc_id: str) -> dict[str, Any] | None: ...
    def fetch_view(
        self, claim_no: str, consent_id: str, doc_ids: Sequence[str], now: dt.datetime
    ) -> FetchView: ...
    def audit_append(self, event: dict[str, Any]) -> None: ...
    def audit_submit_each(self, events: Sequence[dict[str, Any]]) -> list[concurrent.futures.Future[Any]]: ...
    def count_rate_limited(self, client: str, day: str) -> None: ...


# An `acceptance` run against a running daemon registers its claim number under this kv key, with
# the time until which its requests are self-test requests (agent.ops.acceptance).
SELFTEST_CLAIM_PREFIX = "ACPT-"
SELFTEST_CLAIM_KEY = "selftest_claim:"


def _served_input(stored: Any) -> dict[str, Any]:
    """The stored document with the version facts the served form and tombstone need."""
    doc = dict(stored.document)
    doc.setdefault("version", stored.version)
    doc.setdefault("status", stored.status)
    doc.setdefault("received_at", stored.received_at)
    return doc


def _storage_errors() -> tuple[type[BaseException], ...]:
    return (sqlite3.Error, OSError, UnavailableError)


class Backend:
    """Adapter over the real ``Store``, ``AuditLog`` and ``KeyRing``."""

    def __init__(self, config: Config, *, store: Any, audit: Any, keyring: Any, clock: Clock) -> None:
        self.config = config
        self.store = store
        self.audit = audit
        self.keyring = keyring
        self.clock = clock
        self._signer: Any = keyring.signer if keyring is not None else None

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (IntegrityError, AuditUnavailableError):
            raise
        except _storage_errors() as exc:
            log.warning("store unavailable: %s", type(exc).__name__)
            raise StorageUnavailable() from None

    # -- health ----------------------------------------------------------------------------
    def storage_ok(self) -> bool:
        try:
            healthy = getattr(self.store, "healthy", None)
            if healthy is not None:
                return bool(healthy())
            self.store.kv_get("relay_ids")
            return True
        except Exception:
            return False

    def audit_ok(self) -> bool:
        try:
            return bool(self.audit.healthy())
        except Exception:
            return False

    # -- keys ------------------------------------------------------------------------------
    def set_signer(self, signer: Any) -> None:
        """Sign documents with this key from now on (signing-key rotation; one reference swap, so a
        response is signed entirely with the old or entirely with the new key)."""
        self._signer = signer

    def current_signer(self) -> Any:
        """The signer now in use (``.kid``, ``.sign``): one response uses one key throughout."""
        return self._signer

    def signing_kid(self) -> str:
        return str(self._signer.kid)

    def sign(self, data: bytes) -> str:
        return str(self._signer.sign(data))

    def subject_ref(self, rrn13: str) -> str:
        return str(self.keyring.rrn_index(rrn13))

    # -- state -----------------------------------------------------------------------------
    def relay_ids(self) -> frozenset[str] | None:
        """The relay ids received at enrollment, or ``None`` when never enrolled (accept any)."""
        return self._call(self.store.relay_ids)  # type: ignore[no-any-return]

    def relay_request_submit(
        self, request_id: str, now: dt.datetime, relay_id: str
    ) -> concurrent.futures.Future[str]:
        """§8 steps 8 and 10 in one store transaction (step 9 is checked before), queued on the
        store's writer thread without waiting: the future completes after the COMMIT that made
        the record durable, group-committed with the other requests queued meanwhile. Its
        outcome (``relay_request_outcome``) is ``"recorded"``, ``"replay"`` or
        ``"relay-not-allowed"`` (then nothing is recorded).
        """
        submitted = self._call(self.store.relay_request_submit, request_id, now, relay_id)
        return submitted  # type: ignore[no-any-return]

    def relay_request_outcome(self, submitted: concurrent.futures.Future[str]) -> str:
        """The outcome of ``relay_request_submit`` once committed (waits until then); a failed
        commit is ``StorageUnavailable``, like every store failure."""
        return str(self._call(self.store.db.result, submitted))

    def search(
        self,
        rrn13: str,
        name: str,
        period_from: dt.date,
        period_to: dt.date,
        types: tuple[str, ...],
        limit: int,
    ) -> SearchOutcome:
        # ``limit``: the store stops decrypting once more than ``limit`` hits are found (→ 422).
        result = self._call(
            self.store.search,
            rrn=rrn13,
            name=name,
            period_from=period_from,
            period_to=period_to,
            document_types=types,
            limit=limit,
        )
        return SearchOutcome([hit.as_json() for hit in result.hits], result.withheld_count)

    def binding_get(self, claim_no: str, now: dt.datetime) -> Binding | None:
        found = self._call(self.store.binding_get, claim_no, now)
        if found is None or found.expires_at <= now.timestamp():
            return None
        return Binding(
            found.claim_no,
            found.consent_id,
            found.subject_ref,
            frozenset(found.allowed_ids),
            float(found.expires_at),
        )

    def binding_extend(
        self,
        claim_no: str,
        consent_id: str,
        subject_ref: str,
        ids: Iterable[str],
        expires_at: float,
        now: dt.datetime,
    ) -> bool:
        """B1/B2 atomically; returns True when B3 applies (another subject/consent won a race)."""
        update = self._call(
            self.store.binding_upsert,
            claim_no,
            consent_id=consent_id,
            subject_ref=subject_ref,
            add_ids=list(ids),
            now=now,
        )
        return bool(update.conflict)

    def get_current(self, doc_id: str) -> dict[str, Any] | None:
        stored = self._call(self.store.get_current, doc_id)
        return None if stored is None else _served_input(stored)

    def fetch_view(
        self, claim_no: str, consent_id: str, doc_ids: Sequence[str], now: dt.datetime
    ) -> FetchView:
        found, stored = self._call(self.store.binding_with_documents, claim_no, consent_id, doc_ids, now)
        binding = None
        if found is not None and found.expires_at > now.timestamp():
            binding = Binding(
                found.claim_no,
                found.consent_id,
                found.subject_ref,
                frozenset(found.allowed_ids),
                float(found.expires_at),
            )
        return FetchView(binding, {doc_id: _served_input(doc) for doc_id, doc in stored.items()})

    # -- audit -----------------------------------------------------------------------------
    def audit_append(self, event: dict[str, Any]) -> None:
        self.audit.append(self.tag_event(event))

    def audit_submit_each(self, events: Sequence[dict[str, Any]]) -> list[concurrent.futures.Future[Any]]:
        """Queue the records of several requests for the audit log's group commit (one commit for
        them all); each future completes once its record is durable, or with
        ``AuditUnavailableError``."""
        return self.audit.submit_each([self.tag_event(event) for event in events])  # type: ignore[no-any-return]

    def tag_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """``actor.kind = "selftest"`` for the requests of an `acceptance` run that uses this
        running daemon's public port (security.md §10, S-37): the run registers its claim number
        in the store first (only a local admin can), so a relay cannot pass its own requests off
        as self-test ones. Only claim numbers with the self-test prefix are looked up."""
        claim = event.get("claim_no")
        actor = event.get("actor")
        if not (isinstance(claim, str) and claim.startswith(SELFTEST_CLAIM_PREFIX)):
            return event
        if not isinstance(actor, dict) or actor.get("kind") != "relay":
            return event
        try:
            until = self.store.kv_get(SELFTEST_CLAIM_KEY + claim)
        except Exception:  # noqa: BLE001 - the record is written untagged rather than not at all
            return event
        if until is None or until < utc_iso(self.clock.now()):
            return event
        return {**event, "actor": {**actor, "kind": "selftest"}}

    def count_rate_limited(self, client: str, day: str) -> None:
        # The audit log keeps the per-day counters its monthly report summarises (security.md §7.5).
        try:
            self.audit.count_rate_limited(client, day)
        except Exception as exc:  # a counter must never turn a 429 into something else
            log.warning("429 counter not written: %s", type(exc).__name__)
