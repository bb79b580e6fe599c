"""Search, fetch and health: steps 6–12 of relay-api.md §8.

The HTTP layer (``agent.api.app``) decides steps 2–5 (in-flight, route, rate, size, media type)
and hands the body here. Everything below is ordered exactly as §8: JSON → schema → relay id →
clock window → replay record → business rules → audit (fail closed) → response. Every search or
fetch that reaches this module produces exactly one audit record (C-34).

Steps 6–11 come in two parts, so that no thread waits for the replay record's commit:
``start`` (steps 6–9, pure, run by the event loop) queues the replay record on the store's
writer and returns; ``finish`` (steps 10–11: the replay outcome, business rules, store reads,
rendering, signing; run by a worker once the record is committed) ends with the prepared
response and its audit event. ``prepare`` does both in the calling thread. Step 12 is the
caller's: the event goes to the audit log's group commit and ``audited`` turns the outcome into
the response that may be sent — the prepared one only once the record is durable, else
``503 audit-unavailable``. ``process`` does all of it in the calling thread.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import math
from typing import Any

from agent import API_REVISION, __version__, metrics
from agent.api.backend import BackendProtocol, Binding, StorageUnavailable
from agent.api.problems import PROBLEM_MEDIA_TYPE, PROBLEMS, ProblemError, problem_body, problem_type
from agent.api.validation import (
    _CLAIM_TOKEN,
    _RELAY_ID,
    FetchRequest,
    SearchRequest,
    parse_json,
    request_id_of,
    validate_fetch,
    validate_search,
)
from agent.clock import Clock, utc_iso
from agent.config import Config
from agent.documents.canonical import serialize
from agent.documents.fhir import bundle_bytes, render_bundle
from agent.documents.served import served_form, tombstone
from agent.errors import AuditUnavailableError, IntegrityError

log = logging.getLogger("agent.api")

JSON_MEDIA_TYPE = "application/json; charset=utf-8"
STANDARD_MEDIA_TYPE = "application/vnd.silson.document+json; version=1"
FHIR_MEDIA_TYPE = "application/fhir+json; fhirVersion=4.0"
CLOCK_TOLERANCE_S = 300
BINDING_LIFETIME_S = 3600
AUDIT_RETRY_AFTER = 5
STORAGE_RETRY_AFTER = 5


@dataclasses.dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON_MEDIA_TYPE
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    problem: str | None = None
    close: bool = False


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Steps 6–11 done: the response to send once ``event`` is durably recorded (step 12)."""

    response: Response
    event: dict[str, Any]
    request_id: str | None


@dataclasses.dataclass(frozen=True)
class ConnPeer:
    """The parts of the connection the handlers need (audit actor, source)."""

    cert_sha256: str | None
    cert_subject: str | None
    ip: str
    port: int


# One encoder for every response body (``json.dumps`` with options builds one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def json_bytes(value: Any) -> bytes:
    return _JSON.encode(value).encode("utf-8")


def problem_response(
    name: str,
    request_id: str | None,
    *,
    errors: Any = None,
    retry_after: int | None = None,
    close: bool = False,
) -> Response:
    headers = [("retry-after", str(retry_after))] if retry_after is not None else []
    return Response(
        PROBLEMS[name][0],
        problem_body(name, request_id, errors),
        PROBLEM_MEDIA_TYPE,
        headers,
        problem=name,
        close=close,
    )


@dataclasses.dataclass
class _AuditContext:
    """What the audit record of one request says (security.md §7.2); filled as steps pass."""

    action: str
    peer: ConnPeer
    request_id: str | None = None
    relay_id: str | None = None
    claim_no: str | None = None
    subject_ref: str | None = None
    document_ids: list[str] = dataclasses.field(default_factory=list)
    reason: str | None = None
    result_count: int | None = None
    withheld_count: int | None = None

    def event(self, response: Response) -> dict[str, Any]:
        result = "success" if response.status < 400 else "denied" if response.status < 500 else "error"
        event: dict[str, Any] = {
            "actor": {
                "kind": "relay",
                "relay_id": self.relay_id,
                "cert_sha256": self.peer.cert_sha256,
                "cert_subject": self.peer.cert_subject,
            },
            "source": {"ip": self.peer.ip, "port": self.peer.port},
            "action": self.action,
            "request_id": self.request_id,
            "claim_no": self.claim_no,
            "subject_ref": self.subject_ref,
            "document_ids": list(self.document_ids),
            "result": result,
            "status": response.status,
            "problem_type": problem_type(response.problem) if response.problem else None,
            "reason": self.reason,
            "bytes_out": len(response.body),
        }
        if self.action == "documents.search":
            event["result_count"] = self.result_count
            event["withheld_count"] = self.withheld_count
        return event


@dataclasses.dataclass(frozen=True)
class Started:
    """Steps 6–9 passed: the request waits for its replay record (step 10), queued by
    ``Handlers.start``; ``record`` is ``None`` when the request is outside the clock window."""

    ctx: _AuditContext
    request: SearchRequest | FetchRequest
    record: concurrent.futures.Future[str] | None


class Handlers:
    def __init__(self, config: Config, backend: BackendProtocol, clock: Clock) -> None:
        self.config = config
        self.backend = backend
        self.clock = clock
        self.limits = config.limits
        self.institution_code = config.agent.institution_code
        self.fhir_base = config.api.fhir_base

    # -- health ----------------------------------------------------------------------------
    def health(self, ingest: str) -> Response:
        storage = "ok" if self.backend.storage_ok() else "unavailable"
        audit = "ok" if self.backend.audit_ok() else "unavailable"
        if "unavailable" in (storage, audit):
            status = "unavailable"
        elif ingest == "degraded":
            status = "degraded"
        else:
            status = "ok"
        body = {
            "status": status,
            "agent_version": __version__,
            "api_version": "v1",
            "api_revision": API_REVISION,
            "institution_code": self.institution_code,
            "server_time": utc_iso(self.clock.now()),
            "clock_tolerance_s": CLOCK_TOLERANCE_S,
            "storage": storage,
            "audit_log": audit,
            "ingest": "degraded" if ingest == "degraded" else "ok",
            "signing_key_id": self.backend.signing_kid(),
        }
        headers = [("retry-after", str(STORAGE_RETRY_AFTER))] if status == "unavailable" else []
        return Response(503 if status == "unavailable" else 200, json_bytes(body), headers=headers)

    # -- search / fetch --------------------------------------------------------------------
    def process(
        self, action: str, peer: ConnPeer, early: ProblemError | None, body: bytes | None
    ) -> Response:
        """Steps 6–12 for one request in the calling thread (blocks until the audit commit)."""
        prepared = self.prepare(action, peer, early, body)
        try:
            self.backend.audit_append(prepared.event)
        except Exception as exc:
            return self.audited(prepared, exc)
        return self.audited(prepared, None)

    @staticmethod
    def audited(prepared: Prepared, audit_error: BaseException | None) -> Response:
        """Step 12: the prepared response once its record is durable, else ``503`` (fail closed)."""
        if audit_error is None:
            return prepared.response
        if not isinstance(audit_error, AuditUnavailableError):
            log.error("audit append failed: %s", type(audit_error).__name__)
        return problem_response(
            "audit-unavailable",
            prepared.request_id,
            retry_after=AUDIT_RETRY_AFTER,
            close=prepared.response.close,
        )

    def prepare(
        self, action: str, peer: ConnPeer, early: ProblemError | None, body: bytes | None
    ) -> Prepared:
        """Steps 6–11 for one request in the calling thread (waits for the replay record)."""
        started = self.start(action, peer, early, body)
        return started if isinstance(started, Prepared) else self.finish(started)

    def start(
        self, action: str, peer: ConnPeer, early: ProblemError | None, body: bytes | None
    ) -> Prepared | Started:
        """Steps 6–9, and step 10 queued: no I/O and no waiting, so the event loop runs it.

        ``early`` is a problem the HTTP layer already decided. A request that fails here is
        answered here (``Prepared``); else its replay record is on its way to the store's writer
        (group-committed with the other requests waiting there) and ``finish`` continues once
        that record is durable. Never raises.
        """
        ctx = _AuditContext(action=action, peer=peer)
        close = False
        try:
            if early is not None:
                close = early.name == "payload-too-large"
                raise early
            assert body is not None
            data = parse_json(body)
            ctx.request_id = request_id_of(data)
            self._note_envelope(ctx, data)
            request: SearchRequest | FetchRequest
            if action == "documents.search":
                request = validate_search(data)
            else:
                request = validate_fetch(data, max_ids=int(self.limits.max_fetch_ids))
                ctx.document_ids = list(request.document_ids)
            env = request.envelope
            now = self.clock.now()
            if not within_clock_window(env.sent_at, now, whole=env.sent_at_whole):
                # Outside the clock window nothing is recorded; whether the answer is 403 or 422
                # takes a store read, which is ``finish``'s (never the event loop's).
                return Started(ctx, request, None)
            return Started(ctx, request, self.backend.relay_request_submit(env.request_id, now, env.relay_id))
        except Exception as exc:
            response = self._failure(ctx, exc, close=close)
        return Prepared(response, ctx.event(response), ctx.request_id)

    def finish(self, started: Started) -> Prepared:
        """Steps 8–11 after ``start``: the relay id and replay outcome, the business rules, the
        reads, rendering and signing. Blocks until the replay record is committed (returns at
        once when called from its completion). Never raises."""
        ctx = started.ctx
        try:
            if isinstance(started.request, SearchRequest):
                # The RRN was read at step 7: a search refused at steps 8–10 (relay id, clock,
                # replay) names its subject too (security.md §7.2: null only before it was read).
                ctx.subject_ref = self.backend.subject_ref(started.request.rrn13)
            self._check_envelope(started)
            if isinstance(started.request, SearchRequest):
                response = self._search(started.request, ctx)
            else:
                response = self._fetch(started.request, ctx)
        except Exception as exc:
            response = self._failure(ctx, exc, close=False)
        return Prepared(response, ctx.event(response), ctx.request_id)

    @staticmethod
    def _failure(ctx: _AuditContext, exc: Exception, *, close: bool) -> Response:
        """The problem response for a request that stopped at ``exc``; notes the audit reason."""
        if isinstance(exc, ProblemError):
            ctx.reason = ctx.reason or exc.reason
            return problem_response(
                exc.name, ctx.request_id, errors=exc.errors, retry_after=exc.retry_after, close=close
            )
        if isinstance(exc, StorageUnavailable):
            ctx.reason = ctx.reason or "storage"
            return problem_response("storage-unavailable", ctx.request_id, retry_after=STORAGE_RETRY_AFTER)
        if isinstance(exc, IntegrityError):
            # A stored record failed authenticated decryption: nothing is released (S-22).
            ctx.reason = "integrity"
            return problem_response("internal-error", ctx.request_id)
        # A bug: log the class and place only, never the message (§8 logging).
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        log.error(
            "internal error in %s: %s at %s:%s",
            ctx.action,
            type(exc).__name__,
            tb.tb_frame.f_code.co_filename if tb else "?",
            tb.tb_lineno if tb else "?",
        )
        ctx.reason = ctx.reason or "internal"
        return problem_response("internal-error", ctx.request_id)

    @staticmethod
    def _note_envelope(ctx: _AuditContext, data: dict[str, Any]) -> None:
        """Record the syntactically valid envelope members for the audit (never invalid input)."""
        relay_id = data.get("relay_id")
        if isinstance(relay_id, str) and _RELAY_ID.match(relay_id):
            ctx.relay_id = relay_id
        claim = data.get("claim")
        if isinstance(claim, dict):
            claim_no = claim.get("claim_no")
            if isinstance(claim_no, str) and _CLAIM_TOKEN.match(claim_no):
                ctx.claim_no = claim_no

    def _check_envelope(self, started: Started) -> None:
        """Steps 8–10: relay id, clock window, then the atomic replay record.

        The clock window is pure, so ``start`` looked at it first: inside it, the relay-id check
        and the replay record are one store transaction, queued by ``start``; outside it, only
        the relay ids are read (a relay that is not allowed still gets its 403 before the 422).
        """
        env = started.request.envelope
        if started.record is None:
            relay_ids = self.backend.relay_ids()
            if relay_ids is not None and env.relay_id not in relay_ids:
                raise ProblemError("relay-not-allowed")
            raise ProblemError("clock-skew")
        outcome = self.backend.relay_request_outcome(started.record)
        if outcome == "relay-not-allowed":
            raise ProblemError("relay-not-allowed")
        if outcome != "recorded":
            raise ProblemError("replay-detected")

    def _search(self, req: SearchRequest, ctx: _AuditContext) -> Response:
        env = req.envelope
        # ``finish`` computed it before the envelope checks (so refusals there name it too).
        subject_ref = ctx.subject_ref or self.backend.subject_ref(req.rrn13)
        ctx.subject_ref = subject_ref
        now = self.clock.now()
        binding = self.backend.binding_get(env.claim_no, now)
        if binding is not None and (
            binding.subject_ref != subject_ref or binding.consent_id != env.consent_id
        ):
            raise ProblemError("claim-conflict")  # B3: binding unchanged, nothing listed
        result = self.backend.search(
            req.rrn13,
            req.patient_name,
            req.period_from,
            req.period_to,
            req.document_types,
            int(self.limits.max_search_results),
        )
        hits = sorted(result.hits, key=lambda h: (h["issued_on"], h["id"]))
        withheld = result.withheld_count
        ctx.withheld_count = withheld
        ctx.result_count = len(hits)
        if withheld:
            ctx.reason = "partial_name_mismatch" if hits else "name_mismatch"
            metrics.NAME_MISMATCH.inc()
        if len(hits) > int(self.limits.max_search_results):
            ctx.result_count = 0
            raise ProblemError("too-many-results")
        ids = [h["id"] for h in hits]
        ctx.document_ids = ids
        conflict = self.backend.binding_extend(
            env.claim_no, env.consent_id, subject_ref, ids, now.timestamp() + BINDING_LIFETIME_S, now
        )
        if conflict:  # a concurrent search bound the claim to someone else meanwhile
            ctx.document_ids = []
            ctx.result_count = 0
            raise ProblemError("claim-conflict")
        body = {
            "request_id": env.request_id,
            "claim_no": env.claim_no,
            "institution_code": self.institution_code,
            "generated_at": utc_iso(self.clock.now()),
            "count": len(hits),
            "documents": hits,
        }
        return Response(200, json_bytes(body))

    def _fetch(self, req: FetchRequest, ctx: _AuditContext) -> Response:
        env = req.envelope
        now = self.clock.now()
        # Binding and documents in one store snapshot; documents only when B4 and B5 hold.
        view = self.backend.fetch_view(env.claim_no, env.consent_id, req.document_ids, now)
        binding: Binding | None = view.binding
        if binding is None or binding.consent_id != env.consent_id:
            raise ProblemError("claim-not-bound")  # B4
        ctx.subject_ref = binding.subject_ref
        if any(doc_id not in binding.allowed_ids for doc_id in req.document_ids):
            raise ProblemError("document-not-found")  # B5: all or nothing, no hint which id
        entries: list[dict[str, Any]] = []
        total = 0
        max_bytes = int(self.limits.max_response_bytes)
        rendered: list[tuple[str, str, int, str, bytes]] = []
        for doc_id in req.document_ids:
            doc = view.documents.get(doc_id)
            if doc is None:  # purged since the search
                raise ProblemError("document-not-found")
            media_type, content = self._render(doc, doc_id, req.format)
            total += len(content)
            if total > max_bytes:
                raise ProblemError("response-too-large")
            rendered.append(
                (doc_id, str(doc.get("document_type")), int(doc.get("version", 0)), media_type, content)
            )
        signer = self.backend.current_signer()  # one key for the whole response, even mid-rotation
        signer_kid = str(signer.kid)
        for doc_id, doc_type, version, media_type, content in rendered:
            entries.append(
                {
                    "id": doc_id,
                    "type": doc_type,
                    "version": version,
                    "media_type": media_type,
                    "content_base64": base64.b64encode(content).decode("ascii"),
                    "content_sha256": hashlib.sha256(content).hexdigest(),
                    "signature": {"alg": "ES256", "kid": signer_kid, "value": str(signer.sign(content))},
                }
            )
        body = {
            "request_id": env.request_id,
            "claim_no": env.claim_no,
            "institution_code": self.institution_code,
            "format": req.format,
            "generated_at": utc_iso(self.clock.now()),
            "count": len(entries),
            "documents": entries,
        }
        for _, doc_type, _, _, _ in rendered:
            if doc_type in metrics.DOCUMENT_TYPES:
                _released_counter(doc_type, req.format).inc()
        return Response(200, json_bytes(body))

    def _render(self, doc: dict[str, Any], doc_id: str, fmt: str) -> tuple[str, bytes]:
        """Content bytes of §6.4: JCS of the served form (or tombstone), or the FHIR Bundle."""
        if fmt == "fhir":
            return FHIR_MEDIA_TYPE, bundle_bytes(render_bundle(doc, doc_id=doc_id, fhir_base=self.fhir_base))
        served = tombstone(doc) if doc.get("status") == "cancelled" else served_form(doc)
        return STANDARD_MEDIA_TYPE, serialize(served)


@functools.cache
def _released_counter(document_type: str, fmt: str) -> Any:
    """The metric child of one (closed) label set, looked up once rather than per document."""
    return metrics.DOCUMENTS_RELEASED.labels(document_type=document_type, format=fmt)


TRANSIT_GRACE_S = 0.4  # a sub-second stamp's age includes its own transit and parsing


def within_clock_window(sent_at: dt.datetime, now: dt.datetime, *, whole: bool | None = None) -> bool:
    """relay-api.md §4 rule 2: ``|sent_at − agent clock| ≤ 300 s``, "the boundary value 300 s is
    accepted" — at the resolution of the stamp (decision 32). A whole-second stamp is compared
    with the agent clock truncated to the second, so ``now − 300 s`` written in whole seconds is
    accepted although it is read a fraction of a second later, and 301 s is not; a stamp with a
    fraction is compared exactly, less 0.4 s for its transit when it lies in the past (so
    300.5 s old is refused). A stamp in the future only gets closer in transit: no grace."""
    age = (now - sent_at).total_seconds()
    if age < 0:
        return -age <= CLOCK_TOLERANCE_S
    if whole if whole is not None else sent_at.microsecond == 0:
        return math.floor(now.timestamp()) - sent_at.timestamp() <= CLOCK_TOLERANCE_S
    return age - TRANSIT_GRACE_S <= CLOCK_TOLERANCE_S


def today_kst(now: dt.datetime) -> str:
    """The per-day 429 counter is keyed by the local (Asia/Seoul) calendar day, like the report."""
    from agent.clock import KST

    return now.astimezone(KST).date().isoformat()
