"""``acceptance``: the 검수 self-test clinic IT runs after installing (cli.md §3, S-37).

What it proves, end to end, on the installation as it is:

1. config and keys load; the audit log takes an ``admin.acceptance`` record (fail closed: no record,
   no test; security.md §7.1);
2. a daemon serves the installation: the running one, else the real ``Daemon`` composition started
   in this process for the test (a port held by another process is a FAIL, cli.md §3);
3. the public port serves ``tls/server.crt`` (whose key matches) and refuses a client without a
   certificate before any HTTP byte (relay-api.md §2.3);
4. a small synthetic set — all four document types, one synthetic patient made for this run,
   document numbers ``ACPT-<run>`` where the pattern allows — goes through the real hand-over
   (temporary name, rename into the first standard-profile watch folder) and is committed by
   ingest;
5. the set is found and fetched (standard and FHIR) like the relay does, with a client
   certificate over TLS: through the public port when the installation holds the dev
   ``tls/relay-client.*``, else through a temporary loopback-only listener of the same server stack
   that trusts a throw-away self-test CA (the public port never trusts that CA); every signature,
   ``content_sha256`` and ``kid`` is verified, every FHIR bundle validated;
6. the audit chain verifies;
7. every trace of the test data is removed — documents and versions, archive entries, ledger rows,
   quarantine entries the file caused, the claim binding, the source file — and the set is shown
   to be no longer searchable.

Audit (security.md §10): the self-test's own records carry ``actor.kind = "selftest"``; so do the
relay requests it makes through a listener this module starts (the in-process daemon's public port
and the temporary listener), via ``_SelftestBackend``. Requests to an already running daemon are
recorded by that daemon as ``relay`` requests (its API has no way to know they are ours).

Checks report PASS/FAIL with a value-free detail: counts, rule ids, key ids, addresses, ids.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import random
import secrets
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.api.backend import SELFTEST_CLAIM_KEY, SELFTEST_CLAIM_PREFIX, Backend
from agent.clock import SystemClock, utc_iso
from agent.config import Config, parse_listen
from agent.errors import AgentError

PASS, FAIL = "PASS", "FAIL"
ACTION = "admin.acceptance"
MARK = "ACPT"  # prefix of every self-test document number, claim number and file name
INGEST_TIMEOUT_S = 30.0
POLL_S = 0.1
TICK_S = 5.0
DOCUMENT_TYPES = ("receipt", "receipt_detail", "prescription", "pharmacy_receipt")
# Checks in the order they run (the progress bar's total); not every run reaches every one.
STEPS = (
    "config and keys",
    "audit record",
    "daemon",
    "public port handshake",
    "ingest",
    "search",
    "fetch standard",
    "fetch fhir",
    "fhir validity",
    "cleanup",
    "not searchable",
    "audit chain",
)


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    def as_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Report:
    checks: list[Check]
    duration_s: float
    run_id: str

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status == PASS for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.as_json() for c in self.checks], "duration_s": self.duration_s}


class Progress(Protocol):
    """How a run reports while it works (the command draws a bar or prints plain lines)."""

    def step(self, name: str) -> None: ...

    def done(self, check: Check) -> None: ...

    def tick(self, message: str) -> None: ...


class NullProgress:
    def step(self, name: str) -> None:
        pass

    def done(self, check: Check) -> None:
        pass

    def tick(self, message: str) -> None:
        pass


class _Failed(Exception):
    """A step failed: carries its value-free detail."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# -- the synthetic set ----------------------------------------------------------------------------------
@dataclasses.dataclass
class SelftestSet:
    """The self-test documents of one run and how to find them again."""

    run_id: str
    documents: list[dict[str, Any]]
    name: str = dataclasses.field(repr=False)
    rrn: str = dataclasses.field(repr=False)
    period_from: str = ""
    period_to: str = ""

    @property
    def keys(self) -> list[tuple[str, str, str]]:
        return [(d["institution"]["ykiho"], d["document_type"], d["document_no"]) for d in self.documents]


def _pick_encounter(docs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """A receipt, its 세부산정내역, a prescription of the same visit and the pharmacy receipt filling it."""
    by = {t: [d for d in docs if d["document_type"] == t] for t in DOCUMENT_TYPES}
    details = {(d["institution"]["ykiho"], d.get("receipt_no")): d for d in by["receipt_detail"]}
    fills = {d.get("prescription_issue_no"): d for d in by["pharmacy_receipt"]}
    for rx in by["prescription"]:
        ykiho = rx["institution"]["ykiho"]
        pharmacy = fills.get(rx["document_no"])
        if pharmacy is None or (pharmacy.get("prescribing_institution") or {}).get("ykiho", ykiho) != ykiho:
            continue
        for receipt in by["receipt"]:
            detail = details.get((ykiho, receipt["document_no"]))
            if (
                detail is not None
                and receipt["institution"]["ykiho"] == ykiho
                and receipt["issued_on"] == rx["issued_on"]
                and receipt["patient"].get("rrn") == rx["patient"].get("rrn")
            ):
                return [receipt, detail, rx, pharmacy]
    return None


def build_selftest_set(
    run_id: str, *, taken: Callable[[str, str, str], bool], rng: random.Random | None = None
) -> SelftestSet:
    """Four linked synthetic documents made unique to this run.

    Receipt, statement and pharmacy receipt get ``ACPT-<run>`` numbers; a prescription number must
    be ``YYYYMMDD-NNNNN`` (ID-5), so it gets a serial in 90000–99999 not ``taken`` in the store.
    The patient is synthetic (``가상`` name, RRN with the synthetic ``99`` mark, documents.md §1)
    and drawn for this run.
    """
    from agent.synth import generate_documents
    from agent.synth.identities import GIVEN_NAMES, NAME_MARK, SYNTHETIC_RRN_MARK

    rng = rng or random.SystemRandom()
    picked = None
    for attempt in range(10):
        picked = _pick_encounter(generate_documents(200, rng.randrange(2**31) + attempt))
        if picked is not None:
            break
    if picked is None:
        raise _Failed("the synthetic generator gave no visit with all four document types")
    receipt, detail, rx, pharmacy = (json.loads(json.dumps(d)) for d in picked)  # deep copies
    birth = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(365 * 49))
    rrn = f"{birth:%y%m%d}{rng.choice('12')}{SYNTHETIC_RRN_MARK}{rng.randrange(10000):04d}"
    name = f"{NAME_MARK}검수{rng.choice(GIVEN_NAMES)}"
    for doc in (receipt, detail, rx, pharmacy):
        patient = doc["patient"]
        patient["name"], patient["rrn"] = name, rrn
        if "patient_reg_no" in patient:
            patient["patient_reg_no"] = f"{MARK}{run_id}"[:20]
    number = f"{MARK}-{run_id}"
    receipt["document_no"] = detail["document_no"] = detail["receipt_no"] = number
    pharmacy["document_no"] = f"{number}-P"
    ykiho = rx["institution"]["ykiho"]
    day = rx["issued_on"].replace("-", "")
    for _ in range(50):
        candidate = f"{day}-{rng.randrange(90000, 100000):05d}"
        if not taken(ykiho, "prescription", candidate):
            break
    else:
        raise _Failed("no free prescription number for the self-test")
    rx["document_no"] = pharmacy["prescription_issue_no"] = candidate
    docs = [receipt, detail, rx, pharmacy]
    dates = [d["issued_on"] for d in docs] + [d["care_period"]["start"] for d in docs if d.get("care_period")]
    return SelftestSet(run_id, docs, name, rrn, min(dates), max(dates))


# -- audit -----------------------------------------------------------------------------------------------
def selftest_actor() -> dict[str, Any]:
    """The person running the self-test, with ``kind = "selftest"`` (security.md §7.2, §10)."""
    from agent.adminctx import admin_actor

    return {**admin_actor(), "kind": "selftest"}


class _SelftestBackend(Backend):
    """The server's store/audit adapter, except that the audit records of requests made with the
    self-test client certificate say ``actor.kind = "selftest"`` (security.md §10: the monthly
    report counts them apart). ``certs=None`` tags every request (the temporary listener, which
    trusts only the throw-away self-test CA)."""

    def __init__(
        self, config: Config, *, store: Any, audit: Any, keyring: Any, certs: frozenset[str] | None
    ) -> None:
        super().__init__(config, store=store, audit=audit, keyring=keyring, clock=SystemClock())
        self.selftest_certs = certs

    def tag_event(self, event: dict[str, Any]) -> dict[str, Any]:
        # Every record of this run's own requests (append and group-commit paths alike).
        actor = event.get("actor") or {}
        if actor.get("kind") == "relay" and (
            self.selftest_certs is None or actor.get("cert_sha256") in self.selftest_certs
        ):
            return {**event, "actor": {**actor, "kind": "selftest"}}
        return super().tag_event(event)


# -- TLS helpers -----------------------------------------------------------------------------------------
def connect_host(listen: str) -> tuple[str, int]:
    """Where a local client reaches ``HOST:PORT`` (a wildcard address means loopback)."""
    host, port = parse_listen(listen)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


def _url(host: str, port: int) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _pem_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _spki(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER,  # type: ignore[no-any-return]
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def check_public_port(config: Config, host: str, port: int) -> str:
    """Server certificate and key match, the port serves that certificate, and a client without a
    certificate gets no HTTP byte (relay-api.md §2.3). Returns the detail; raises ``_Failed``."""
    try:
        chain = _pem_certs(Path(config.api.server_cert))
        key = serialization.load_pem_private_key(Path(config.api.server_key).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise _Failed(f"server certificate or key unreadable ({type(exc).__name__})") from None
    if not chain:
        raise _Failed("tls/server.crt holds no certificate")
    if _spki(chain[0].public_key()) != _spki(key.public_key()):
        raise _Failed("the server key does not match the server certificate")
    leaf_der = chain[0].public_bytes(serialization.Encoding.DER)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # pinned below: the served certificate must be ours, byte for byte
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # the handshake completes on our side, so we see the cert
    served: bytes | None = None
    reply = b""
    try:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=None) as tls,
        ):
            served = tls.getpeercert(binary_form=True)
            try:
                tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                reply = tls.recv(16)
            except (ssl.SSLError, OSError):
                reply = b""
    except ssl.SSLError:
        pass  # refused during the handshake itself: that is a refusal too
    except OSError as exc:
        raise _Failed(
            f"cannot connect to the public port {host}:{port} ({exc.strerror or type(exc).__name__})"
        ) from None
    if reply.startswith(b"HTTP"):
        raise _Failed("a client without a certificate got an HTTP response")
    if served is not None and served != leaf_der:
        raise _Failed("the public port serves a different certificate than tls/server.crt")
    seen = "serves tls/server.crt" if served is not None else "served certificate not observed"
    return f"{seen}; key matches; a client without a certificate is refused"


class _PinnedAdapter:
    """Builds a ``requests`` adapter whose TLS context trusts ``bundle`` (partial chains allowed,
    so our own server certificate chain may be the anchor) and skips the host-name check: the
    self-test connects to its own loopback port, where the certificate's names need not match."""

    @staticmethod
    def make(bundle: Path, *, partial_chain: bool) -> Any:
        from requests.adapters import HTTPAdapter

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(bundle))
        if partial_chain:
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN

        class Adapter(HTTPAdapter):
            def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
                kwargs["ssl_context"] = ctx
                kwargs["assert_hostname"] = False
                super().init_poolmanager(*args, **kwargs)

        return Adapter()


# -- FHIR ------------------------------------------------------------------------------------------------
def _references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def fhir_structure_problem(bundle: Any) -> str | None:
    """The structural invariants of relay-api.md §6.4 / documents.md §11; a value-free problem or None."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return "not a Bundle"
    if bundle.get("type") != "document":
        return "Bundle.type is not document"
    entries = bundle.get("entry") or []
    if not entries or (entries[0].get("resource") or {}).get("resourceType") != "Composition":
        return "the Composition is not the first entry"
    urls = [e.get("fullUrl") for e in entries]
    if not all(isinstance(u, str) and u.startswith("urn:uuid:") for u in urls):
        return "an entry.fullUrl is not a urn:uuid"
    known = set(urls)
    for ref in _references(entries):
        if ref.startswith("urn:uuid:") or "/" in ref:
            if ref not in known:
                return "a reference does not resolve inside the Bundle"
    return None


def fhir_validator() -> Callable[[dict[str, Any]], str | None] | None:
    """``fhir.resources`` R4B model validation when installed (a dev dependency), else None."""
    try:
        from fhir.resources.R4B.bundle import Bundle
    except ImportError:
        return None

    def validate(bundle: dict[str, Any]) -> str | None:
        try:
            Bundle.model_validate(bundle)
        except Exception as exc:  # pydantic ValidationError: report locations only, never input values
            errors = getattr(exc, "errors", None)
            if callable(errors):
                try:
                    first = errors(include_input=False, include_url=False)[0]
                    return (
                        "invalid at "
                        + ".".join(str(p) for p in first.get("loc", ()))
                        + f" ({first.get('type')})"
                    )
                except Exception:
                    pass
            return f"invalid ({type(exc).__name__})"
        return None

    return validate


# -- the run ------------------------------------------------------------------------------------------------
class _Acceptance:
    def __init__(self, config: Config, progress: Progress, *, ingest_timeout: float) -> None:
        self.config = config
        self.progress = progress
        self.ingest_timeout = ingest_timeout
        self.run_id = secrets.token_hex(5).upper()
        self.claim_no = f"{MARK}-{self.run_id}"
        assert self.claim_no.startswith(SELFTEST_CLAIM_PREFIX)
        self.selftest_claim_registered = False
        self.consent_id = f"{MARK}-CONSENT-{self.run_id}"
        self.checks: list[Check] = []
        self.keyring: Any = None
        self.audit: Any = None
        self.store: Any = None
        self.own_store = False
        self.daemon: Any = None
        self.temp_server: Any = None
        self.api_listen: str | None = None
        self.tmp_dir: Path | None = None
        self.set: SelftestSet | None = None
        self.sha256: str | None = None
        self.dropped: list[Path] = []
        self.doc_ids: dict[tuple[str, str, str], str] = {}
        self.last_commit_before: str | None = None
        self.client: Any = None
        self.via = ""
        self.fetched: dict[str, list[dict[str, Any]]] = {}

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def _record(self, name: str, status: str, detail: str) -> Check:
        check = Check(name, status, detail)
        self.checks.append(check)
        self.progress.done(check)
        return check

    def step(self, name: str, fn: Callable[[], str]) -> bool:
        self.progress.step(name)
        try:
            detail = fn()
        except _Failed as failed:
            self._record(name, FAIL, failed.detail)
            return False
        except AgentError as exc:
            self._record(name, FAIL, exc.message)
            return False
        except Exception as exc:  # a bug or an unexpected answer: class and place only, never the message
            self._record(name, FAIL, f"unexpected {type(exc).__name__} at {_where(exc)}")
            return False
        self._record(name, PASS, detail)
        return True

    # -- top level -------------------------------------------------------------------------------------------
    def run(self) -> Report:
        started = time.monotonic()
        try:
            if self.step("config and keys", self._load_keys) and self.step("audit record", self._audit_start):
                try:
                    self._body()
                finally:
                    self._audit_end()
        finally:
            self._teardown()
        return Report(self.checks, round(time.monotonic() - started, 3), self.run_id)

    def _body(self) -> None:
        if not self.step("daemon", self._attach_daemon):
            self.step("audit chain", self._audit_chain)
            return
        self.step("public port handshake", self._handshake)
        try:
            if self.step("ingest", self._ingest) and self.step("search", self._search):
                self.step("fetch standard", lambda: self._fetch("standard"))
                if self.step("fetch fhir", lambda: self._fetch("fhir")):
                    self.step("fhir validity", self._fhir_validity)
        finally:
            if self.set is not None:
                if self.step("cleanup", self._cleanup):
                    self.step("not searchable", self._not_searchable)
        self.step("audit chain", self._audit_chain)

    # -- steps ---------------------------------------------------------------------------------------------
    def _load_keys(self) -> str:
        from agent.keys import load_keyring

        self.keyring = load_keyring(self.config.keys_dir, require_signing=True)
        kid = self.keyring.signer.kid
        return f"config {self.config.source or 'defaults'} loaded; keys load (signing kid {kid[:12]}…)"

    def _audit_start(self) -> str:
        from agent.adminctx import admin_source
        from agent.audit.log import AuditLog

        self.audit = AuditLog.open(self.config, signer=self.keyring.signer)
        try:
            record = self.audit.append(
                {
                    "actor": selftest_actor(),
                    "source": admin_source(),
                    "action": ACTION,
                    "result": None,
                    "phase": "start",
                    "run_id": self.run_id,
                }
            )
        except AgentError as exc:  # fail closed (security.md §7.3): no record, no test
            raise _Failed(f"audit log unwritable: {exc.message}") from None
        return f"{ACTION} recorded (seq {record['seq']}, actor.kind selftest)"

    def _audit_end(self) -> None:
        if self.audit is None:
            return
        from agent.adminctx import admin_source

        failed = [c.name for c in self.checks if c.status != PASS]
        with contextlib.suppress(AgentError):  # the outcome is already on screen; the start record exists
            self.audit.append(
                {
                    "actor": selftest_actor(),
                    "source": admin_source(),
                    "action": ACTION,
                    "result": "error" if failed else "success",
                    "phase": "end",
                    "run_id": self.run_id,
                    "failed_checks": failed,
                    "document_ids": sorted(self.doc_ids.values()),
                }
            )

    def _attach_daemon(self) -> str:
        from agent.ops.daemon import is_running, read_state

        state = read_state(self.config)
        if is_running(state):
            assert state is not None
            listen = (state.get("api") or {}).get("listen")
            if not listen:
                raise _Failed(f"the running daemon (pid {state.get('pid')}) has no relay API listener")
            from agent.store.store import Store

            self.store = Store.open(self.config, keyring=self.keyring)
            self.own_store = True
            self.api_listen = listen
            # The running daemon's API tags this run's requests as self-test ones (S-37).
            until = utc_iso(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
            self.store.kv_set(SELFTEST_CLAIM_KEY + self.claim_no, until)
            self.selftest_claim_registered = True
            return f"running daemon used (pid {state.get('pid')}, api {listen})"
        return self._start_daemon()

    def _start_daemon(self) -> str:
        """The real composition in this process; its public port is served by the same server stack,
        with the audit adapter that marks this self-test's requests (``_SelftestBackend``)."""
        from agent.api.server import RelayServer
        from agent.ops.daemon import Daemon

        configured = self.config.api.listen
        host, port = parse_listen(configured)
        if port and not _bindable(host, port):  # before anything starts: nothing is ingested for a FAIL
            raise _Failed(f"port in use: api.listen {configured} is held by another process")
        daemon = Daemon(self.config, stderr=io.StringIO(), with_api=False)
        self.daemon = daemon
        try:
            daemon.start()
        except AgentError as exc:
            raise _Failed(_port_detail(exc.message)) from None
        certs: frozenset[str] = frozenset()
        client_cert = self.config.tls_dir / "relay-client.crt"
        if client_cert.exists():
            certs = frozenset(
                hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()
                for c in _pem_certs(client_cert)
            )
        backend = _SelftestBackend(
            self.config, store=daemon.store, audit=daemon.audit, keyring=daemon.keyring, certs=certs
        )
        server = RelayServer(
            self.config, store=daemon.store, audit=daemon.audit, keyring=daemon.keyring, backend=backend
        )
        try:
            server.start()
        except OSError as exc:
            raise _Failed(
                f"port in use: api.listen {configured} ({exc.strerror or type(exc).__name__})"
            ) from None
        daemon.api = server
        host, port = server.address[0], server.address[1]
        daemon.api_address = (host, port)
        daemon.write_state(running=True)
        self.store = daemon.store
        self.api_listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"not running: started in this process for the test (api {self.api_listen})"

    def _handshake(self) -> str:
        assert self.api_listen is not None
        host, port = connect_host(self.api_listen)
        return check_public_port(self.config, host, port)

    def _watch_folder(self) -> tuple[int, Any]:
        for index, watch in enumerate(self.config.watch):
            if watch.profile in ("", "standard"):
                return index, watch
        raise _Failed("no watch folder uses the standard profile (the self-test drops standard-format files)")

    def _needs_sentinel(self, index: int, watch: Any) -> bool:
        if watch.sentinel == "required":
            return True
        if watch.sentinel != "auto":
            return False
        from agent.ingest.service import STATE_FILE

        try:
            state = json.loads((self.config.data_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return bool((state.get("sentinel_seen") or {}).get(str(index)))

    def _ingest(self) -> str:
        from agent.documents.validate import validate_document
        from agent.formats import write_export

        index, watch = self._watch_folder()
        folder = Path(watch.path)
        if not folder.is_dir():
            raise _Failed(f"watch folder {index} is not reachable")
        store = self.store
        self.set = build_selftest_set(self.run_id, taken=lambda *key: store.find_doc_id(*key) is not None)
        now = dt.datetime.now(dt.UTC)
        for doc in self.set.documents:
            if store.find_doc_id(doc["institution"]["ykiho"], doc["document_type"], doc["document_no"]):
                raise _Failed("a self-test document number is already in the store")
            checked = validate_document(
                doc, received_at=now, default_valid_days=int(self.config.validation.default_valid_days)
            )
            if not checked.ok:
                raise _Failed(
                    "the synthetic set is invalid: " + ", ".join(sorted({p.rule for p in checked.errors}))
                )
        data = write_export(self.set.documents, format="json")
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.last_commit_before = store.kv_get("last_commit_at")
        name = f"{MARK.lower()}-{self.run_id.lower()}.json"
        self.dropped.append(folder / name)
        _hand_over(folder, name, data)
        if self._needs_sentinel(index, watch):
            self.dropped.append(folder / f"{name}.done")
            _hand_over(folder, f"{name}.done", b"")
        if self.daemon is not None and self.daemon.ingest is not None:
            self.daemon.ingest.rescan_all()  # do not depend on change events alone
        started = time.monotonic()
        timeout = max(self.ingest_timeout, float(watch.scan_interval) + float(watch.settle) + 5.0)
        next_tick = started + TICK_S
        file_id = self.sha256[:16]
        while True:
            found = {key: store.find_doc_id(*key) for key in self.set.keys}
            if all(found.values()):
                self.doc_ids = {k: v for k, v in found.items() if v}
                break
            mine = [entry for entry in store.quarantine_list() if entry.file_id == file_id]
            if mine:
                rules = sorted({rule for entry in mine for rule in entry.reason.get("rules", [])})
                raise _Failed("the self-test file was quarantined: " + (", ".join(rules) or "no rule given"))
            now_m = time.monotonic()
            if now_m - started > timeout:
                done = sum(1 for v in found.values() if v)
                raise _Failed(
                    f"not committed within {timeout:.0f} s ({done} of {len(found)} documents); "
                    f"is ingest running and the folder watched?"
                )
            if now_m >= next_tick:
                self.progress.tick(f"waiting for ingest ({now_m - started:.0f} s)")
                next_tick = now_m + TICK_S
            time.sleep(POLL_S)
        types = sorted({key[1] for key in self.doc_ids})
        return (
            f"{len(self.doc_ids)} documents ({', '.join(types)}) committed by ingest from watch folder "
            f"{index} in {time.monotonic() - started:.1f} s"
        )

    # -- relay round trip -----------------------------------------------------------------------------------
    def _relay_client(self) -> Any:
        if self.client is not None:
            return self.client
        from agent.api.relaysim import RelayClient

        tls = self.config.tls_dir
        relay_ids = self.store.kv_get("relay_ids")
        relay_id = "silson-agent-selftest"
        if relay_ids:
            with contextlib.suppress(ValueError, TypeError, IndexError):
                relay_id = sorted(json.loads(relay_ids))[0]
        if (tls / "relay-client.crt").exists() and (tls / "relay-client.key").exists():
            assert self.api_listen is not None
            host, port = connect_host(self.api_listen)
            cert, key = tls / "relay-client.crt", tls / "relay-client.key"
            self.via = "the public port"
        else:
            host, port, cert, key = self._temporary_listener()
            self.via = "a temporary loopback listener (self-test CA)"
        dev_ca = tls / "dev-ca.crt"
        bundle = dev_ca if dev_ca.exists() else self._server_chain_bundle()
        client = RelayClient(_url(host, port), cert, key, bundle, relay_id=relay_id)
        client.session.mount("https://", _PinnedAdapter.make(bundle, partial_chain=not dev_ca.exists()))
        self.client = client
        return client

    def _tmp(self) -> Path:
        if self.tmp_dir is None:
            from agent.fsutil import ensure_dir

            self.tmp_dir = ensure_dir(self.config.data_dir / "tmp" / f"acpt-{self.run_id.lower()}")
        return self.tmp_dir

    def _server_chain_bundle(self) -> Path:
        """The chain in tls/server.crt as the trust anchor (production: no dev CA on disk)."""
        from agent import pki

        path = self._tmp() / "server-chain.crt"
        pki.write_certs(path, *_pem_certs(Path(self.config.api.server_cert)))
        return path

    def _temporary_listener(self) -> tuple[str, int, Path, Path]:
        """A loopback-only listener of the same server stack, trusting only a throw-away CA."""
        from agent import pki
        from agent.api.server import RelayServer

        tmp = self._tmp()
        ca_key, ca = pki.make_ca(f"silson-agent self-test CA {self.run_id}", days=1)
        client_key, client = pki.make_cert(
            ca_key, ca, f"silson-agent-selftest-{self.run_id.lower()}", client=True, days=1
        )
        pki.write_certs(tmp / "selftest-ca.crt", ca)
        pki.write_certs(tmp / "selftest-client.crt", client)
        pki.write_key(tmp / "selftest-client.key", client_key)
        api = dict(self.config.api.values)
        api.update(
            listen="127.0.0.1:0",
            client_ca=tmp / "selftest-ca.crt",
            allowed_client_fingerprints=(),
            client_crl=None,
        )
        variant = dataclasses.replace(self.config, api=dataclasses.replace(self.config.api, values=api))
        audit = self.daemon.audit if self.daemon is not None else self.audit
        backend = _SelftestBackend(variant, store=self.store, audit=audit, keyring=self.keyring, certs=None)
        server = RelayServer(variant, store=self.store, audit=audit, keyring=self.keyring, backend=backend)
        server.start()
        self.temp_server = server
        host, port = server.address[:2]
        return host, port, tmp / "selftest-client.crt", tmp / "selftest-client.key"

    def _search_ids(self) -> list[str]:
        assert self.set is not None
        client = self._relay_client()
        resp = client.search(
            claim_no=self.claim_no,
            consent_id=self.consent_id,
            name=self.set.name,
            rrn=self.set.rrn,
            period_from=self.set.period_from,
            period_to=self.set.period_to,
        )
        if resp.status_code != 200:
            raise _Failed(f"search answered {resp.status_code} ({_problem_type(resp)}) via {self.via}")
        return [d["id"] for d in resp.json().get("documents", [])]

    def _search(self) -> str:
        try:
            listed = self._search_ids()
        except _Failed:
            raise
        except (
            Exception
        ) as exc:  # TLS or connection failure: class only (messages may carry addresses + more)
            raise _Failed(f"search over TLS failed ({type(exc).__name__})") from None
        expected = set(self.doc_ids.values())
        if set(listed) != expected:
            raise _Failed(
                f"search listed {len(set(listed) & expected)} of {len(expected)} self-test documents "
                f"and {len(set(listed) - expected)} others via {self.via}"
            )
        return f"{len(listed)} of {len(expected)} self-test documents listed over TLS via {self.via}"

    def _fetch(self, fmt: str) -> str:
        assert self.set is not None
        ids = sorted(self.doc_ids.values())
        try:
            resp = self._relay_client().fetch(
                claim_no=self.claim_no, consent_id=self.consent_id, document_ids=ids, format=fmt
            )
        except Exception as exc:
            raise _Failed(f"fetch over TLS failed ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise _Failed(f"fetch answered {resp.status_code} ({_problem_type(resp)})")
        entries = resp.json().get("documents", [])
        if [e.get("id") for e in entries] != ids:
            raise _Failed(f"fetch returned {len(entries)} of {len(ids)} documents")
        from agent.api.relaysim import verify_document

        signer = self.keyring.signer
        by_id = {v: k for k, v in self.doc_ids.items()}
        contents = []
        for n, entry in enumerate(entries, 1):
            try:
                content = verify_document(entry, signer.public_key)
            except (ValueError, KeyError, TypeError) as exc:
                raise _Failed(
                    f"document {n} of {len(entries)}: {exc if isinstance(exc, ValueError) else 'malformed'}"
                ) from None
            if entry["signature"].get("kid") != signer.kid:
                raise _Failed(f"document {n}: kid is not the current signing key's")
            text = content.decode("utf-8")
            if self.set.rrn in text:
                raise _Failed(f"document {n}: the served content holds a full RRN")
            body = json.loads(text)
            if fmt == "standard":
                ykiho, doc_type, number = by_id[entry["id"]]
                if (
                    body.get("document_type"),
                    body.get("document_no"),
                    (body.get("institution") or {}).get("ykiho"),
                    body.get("version"),
                ) != (doc_type, number, ykiho, entry.get("version")):
                    raise _Failed(f"document {n}: content does not carry its natural key and version")
            elif not str(entry.get("media_type", "")).startswith("application/fhir+json"):
                raise _Failed(f"document {n}: media type is not application/fhir+json")
            contents.append(body)
        self.fetched[fmt] = contents
        return (
            f"{len(entries)} documents; {len(entries)} signatures verified (ES256, content_sha256, "
            f"kid {signer.kid[:12]}…); no full RRN served"
        )

    def _fhir_validity(self) -> str:
        bundles = self.fetched.get("fhir", [])
        validate = fhir_validator()
        for n, bundle in enumerate(bundles, 1):
            problem = fhir_structure_problem(bundle)
            if problem is None and validate is not None:
                problem = validate(bundle)
            if problem is not None:
                raise _Failed(f"bundle {n} of {len(bundles)}: {problem}")
        how = (
            "fhir.resources R4B model and structural invariants"
            if validate is not None
            else "structural invariants only (fhir.resources not installed): Bundle type document, Composition "
            "first, urn:uuid fullUrls, references resolvable"
        )
        return f"{len(bundles)} bundles valid ({how})"

    # -- clean-up -----------------------------------------------------------------------------------------
    def _cleanup(self) -> str:
        assert self.set is not None
        # The file first: with ``source_mode = keep`` a rescan would otherwise take it in again.
        removed_files = 0
        for path in self.dropped:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed_files += 1
        if self.dropped:
            with contextlib.suppress(OSError):
                from agent.fsutil import fsync_dir

                fsync_dir(self.dropped[0].parent)
        # Any key committed meanwhile is found again (an ingest that finished after our timeout).
        for key in self.set.keys:
            doc_id = self.store.find_doc_id(*key)
            if doc_id:
                self.doc_ids[key] = doc_id
        counts = {"documents": 0, "archive": 0, "ledger": 0, "quarantine": 0}
        if self.sha256 is not None:
            counts = self.store.erase_rows(
                doc_ids=sorted(self.doc_ids.values()),
                sha256=self.sha256,
                claim_no=self.claim_no,
                last_commit_before=self.last_commit_before,
            )
        left = [key for key in self.set.keys if self.store.find_doc_id(*key)]
        if left:
            raise _Failed(f"{len(left)} self-test documents are still stored")
        return (
            f"removed {counts['documents']} documents, {counts['archive']} archive entries, "
            f"{counts['ledger']} ledger rows, {counts['quarantine']} quarantine entries, "
            f"{removed_files} leftover files removed from the watch folder"
        )

    def _not_searchable(self) -> str:
        assert self.set is not None
        details = []
        if self.client is not None:  # the relay round trip worked before: show it finds nothing now
            try:
                listed = self._search_ids()
            except _Failed:
                raise
            except Exception as exc:
                raise _Failed(f"search over TLS failed ({type(exc).__name__})") from None
            if listed:
                raise _Failed(f"a search over TLS still lists {len(listed)} documents")
            details.append("a search over TLS lists none")
            # That search extended our claim binding again: take it away too.
            self.store.erase_rows(
                doc_ids=[],
                sha256=self.sha256 or "",
                claim_no=self.claim_no,
                last_commit_before=self.last_commit_before,
            )
        hits = self.store.search(
            rrn=self.set.rrn,
            name=self.set.name,
            period_from=self.set.period_from,
            period_to=self.set.period_to,
        )
        if hits.hits or any(self.store.find_doc_id(*key) for key in self.set.keys):
            raise _Failed("the store still finds self-test documents")
        if self.sha256 is not None and (
            self.store.file_known(self.sha256)
            or any(q.file_id == self.sha256[:16] for q in self.store.quarantine_list())
        ):
            raise _Failed("the store still holds the self-test file's ledger or quarantine entries")
        details.append("the store finds no self-test document, ledger row or quarantine entry")
        return "; ".join(details)

    def _audit_chain(self) -> str:
        result = self.audit.verify()
        if not result.ok:
            raise _Failed(f"broken at seq {result.first_bad_seq} ({result.kind})")
        return f"intact ({result.records} records, head seq {result.head[0]})"

    def _teardown(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.temp_server is not None:
            with contextlib.suppress(Exception):
                self.temp_server.stop()
        if self.daemon is not None:
            with contextlib.suppress(Exception):
                self.daemon.stop()
        if self.own_store and self.store is not None:
            if self.selftest_claim_registered:
                with contextlib.suppress(Exception):
                    self.store.kv_delete(SELFTEST_CLAIM_KEY + self.claim_no)
            with contextlib.suppress(Exception):
                self.store.close()
        if self.audit is not None:
            with contextlib.suppress(Exception):
                self.audit.close()
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _port_detail(message: str) -> str:
    """The daemon's listen error, phrased as the check's FAIL (it names the setting and address)."""
    if "cannot listen on" in message:
        return "port in use: " + message.split("cannot listen on ", 1)[1]
    return message


def _where(exc: BaseException) -> str:
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


def _problem_type(resp: Any) -> str:
    try:
        value = resp.json().get("type", "")
    except ValueError:
        return "no problem document"
    return str(value).rsplit("/", 1)[-1] or "no problem type"


def _hand_over(folder: Path, name: str, data: bytes) -> None:
    """The export hand-over (exports.md §1): write under a temporary name, fsync, rename in."""
    from agent.fsutil import fsync_dir

    tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Run as root while the daemon runs as its service user: the file must be its to read.
            st = folder.stat()
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)


def run_acceptance(
    config: Config, *, progress: Progress | None = None, ingest_timeout: float = INGEST_TIMEOUT_S
) -> Report:
    """Run the whole self-test; never raises for a failed check (it is in the report)."""
    return _Acceptance(config, progress or NullProgress(), ingest_timeout=ingest_timeout).run()


__all__ = [
    "FAIL",
    "PASS",
    "STEPS",
    "Check",
    "NullProgress",
    "Progress",
    "Report",
    "SelftestSet",
    "build_selftest_set",
    "check_public_port",
    "fhir_structure_problem",
    "run_acceptance",
]
